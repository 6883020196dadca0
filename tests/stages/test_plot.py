"""The alignment plot (`pipeline cupix inspect --plot`, `pipeline inspect CONFIG --plot`): every sub drawn where
transform.align places it, in its group's colour, heading shown, check_world problems in red."""
import copy
import json
import math

import numpy as np
import pytest
from PIL import Image

from stages.cupix.plot import GROUP_COLOURS, plot_alignment
from stages.preview import PNG_KEY, PROBLEM
from tests.conftest import cli, write_config
from tests.test_cli import demo_world_matrices


def read(path):
    image = Image.open(path)
    image.load()
    return np.asarray(image.convert("RGBA")), json.loads(image.text[PNG_KEY])


def pose(degrees, x, y):
    angle = math.radians(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    matrix[:2, 3] = (x, y)
    return matrix.tolist()


def colour_at(pixels, x, y):
    return tuple(int(v) for v in pixels[round(y), round(x)])


def test_subs_are_dots_at_their_positions_in_their_groups_colours(tmp_path):
    placed = [
        {"id": "1", "name": "east", "group": "10", "group_name": "one", "matrix": pose(0, 500_020, 4_000_000), "problem": None},
        {"id": "2", "name": "north", "group": "10", "group_name": "one", "matrix": pose(90, 500_000, 4_000_020), "problem": None},
        {"id": "3", "name": "origin", "group": "20", "group_name": "two", "matrix": pose(180, 500_000, 4_000_000),
         "problem": "pointcloud 3 (group 20): compose group_sub differs from the sub's wtm by 1.0000 m"},
    ]
    unplaced = [{"id": "4", "name": "lost", "problem": "its group 99 was not found"}]
    layout = plot_alignment(placed, unplaced, tmp_path / "plot.png", "site")
    pixels, written = read(tmp_path / "plot.png")
    assert written == json.loads(json.dumps(layout))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]  # written under a temporary name, renamed
    subs = {sub["id"]: sub for sub in layout["subs"]}
    panel = layout["panels"][0]
    resolution = panel["resolution"]
    # the dots are where the world positions fall: 20 m apart
    assert subs["1"]["at"][0] - subs["3"]["at"][0] == pytest.approx(20 / resolution)
    assert subs["3"]["at"][1] - subs["2"]["at"][1] == pytest.approx(20 / resolution)
    assert subs["1"]["at"][1] == pytest.approx(subs["3"]["at"][1]) and subs["2"]["at"][0] == pytest.approx(subs["3"]["at"][0])
    x0, y0, w, h = panel["box"]
    u0, v0 = panel["lower_left"]
    assert subs["3"]["at"] == pytest.approx([x0 + (500_000 - u0) / resolution, y0 + h - (4_000_000 - v0) / resolution])
    one, two = GROUP_COLOURS[0] + (255,), GROUP_COLOURS[1] + (255,)
    assert colour_at(pixels, *subs["1"]["at"]) == one and colour_at(pixels, *subs["2"]["at"]) == one
    assert colour_at(pixels, *subs["3"]["at"]) == two
    # the arrow goes along the sub's x axis: east for 1, north for 2, west for 3
    reach = layout["dot"] + (layout["arrow"] - layout["dot"]) / 2
    for sub, (dx, dy) in (("1", (1, 0)), ("2", (0, -1)), ("3", (-1, 0))):
        x, y = subs[sub]["at"]
        colour = one if sub != "3" else two
        assert colour_at(pixels, x + dx * reach, y + dy * reach) == colour
        assert colour_at(pixels, x - dx * reach, y - dy * reach) != colour
    # the problem: a red ring around the dot, the group colour kept inside
    x, y = subs["3"]["at"]
    ring = [colour_at(pixels, x + r, y) for r in range(layout["dot"] + 1, layout["dot"] + 12)]
    assert PROBLEM in ring
    assert [(e["name"], tuple(e["colour"])) for e in layout["legend"]] == [
        ("group 10 (one)", GROUP_COLOURS[0]), ("group 20 (two)", GROUP_COLOURS[1]),
        ("check_world problem (ringed)", PROBLEM[:3])]
    assert layout["notes"] == ["3 origin: pointcloud 3 (group 20): compose group_sub differs from the sub's wtm by 1.0000 m",
                               "not placed: 4 lost: its group 99 was not found"]
    assert all(PROBLEM[:3] != tuple(c) for c in GROUP_COLOURS)


def test_inspect_a_config_draws_the_demo_subs_where_the_run_puts_them(demo_copy, tmp_path):
    done = cli("inspect", demo_copy / "demo.yaml", "--plot", tmp_path / "subs.png", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["id"]: row for row in json.loads(done.stdout)}
    assert [rows[i]["name"] for i in ("5311", "5312", "5313")] == ["scan_01.laz", "scan_02.laz", "scan_03.ply"]
    assert all(rows[i]["check_world"] == "ok" for i in ("5311", "5312", "5313"))
    pixels, layout = read(tmp_path / "subs.png")
    world = demo_world_matrices(demo_copy)
    panel = layout["panels"][0]
    x0, y0, w, h = panel["box"]
    u0, v0 = panel["lower_left"]
    for sub in layout["subs"]:
        x, y = world[sub["name"]][:2, 3]
        assert sub["at"] == pytest.approx([x0 + (x - u0) / panel["resolution"], y0 + h - (y - v0) / panel["resolution"]])
        assert colour_at(pixels, *sub["at"]) == GROUP_COLOURS[0] + (255,) and sub["problem"] is None
    assert layout["title"] == "demo: where transform.align places each sub (compose group_sub)"
    assert [e["name"] for e in layout["legend"]] == ["group 5310 (cluster 1)"]


def test_inspect_a_local_listing_marks_problems_and_exits_1(demo_copy, tmp_path):
    listing = json.loads((demo_copy / "data/capture.json").read_text())
    items = listing["result"]["data"]
    items[2]["attributes"]["meta"]["prop"]["wtm"][3] += 1.0  # sub 5312's own wtm 1 m off what group.tm · sub.tm gives
    lost = copy.deepcopy(items[1])
    lost["id"] = "5399"
    lost["attributes"].update(id=5399, name="lost.laz", parent={"id": 777})
    items.append(lost)
    (tmp_path / "listing.json").write_text(json.dumps(listing))
    done = cli("cupix", "inspect", "--listing", tmp_path / "listing.json", "--plot", tmp_path / "plot.png")
    assert done.returncode == 1, done.stderr
    pixels, layout = read(tmp_path / "plot.png")
    problems = {sub["id"]: sub["problem"] for sub in layout["subs"]}
    assert problems["5311"] is None and problems["5312"].startswith("pointcloud 5312 (group 5310): compose group_sub "
                                                                     "differs from the sub's wtm by 1.0000 m")
    assert layout["notes"][-1] == "not placed: 5399 lost.laz: its group 777 was not found"
    assert "5399" not in problems


def test_plot_needs_a_png_name_and_a_config_needs_cupix_metadata(demo_copy, tmp_path):
    done = cli("cupix", "inspect", "--listing", demo_copy / "data/capture.json", "--plot", tmp_path / "plot.jpg")
    assert done.returncode == 2 and done.stderr.strip().endswith(f"--plot {tmp_path / 'plot.jpg'}: expected a file name "
                                                                  "ending in .png")
    config = write_config(tmp_path, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{demo_copy / 'data/scan_01.laz'}"]
          - type: sink.las
            path: out/{{name}}.las
    """)
    done = cli("inspect", config, "--plot", tmp_path / "plot.png")
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: stages[0] (source.files): scan_01 has no Cupix metadata: give source.files a "
                                   "`metadata` listing, or read the capture with source.cupix")
    assert not (tmp_path / "plot.png").exists()
