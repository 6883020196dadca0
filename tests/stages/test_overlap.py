"""sink.overlap and transform.align's corrections, on the synthetic building of sample_configs/make_building_data.py
(four scans, scan_03 registered 5 cm and 0.3° off), with open3d and numpy as the oracle of the truth."""
import importlib.util
import json
import shutil

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from pipeline import config
from pipeline.errors import PipelineError
from pipeline.runner import Runner
from stages.overlap import corrections as corrections_file
from stages.overlap.adjust import adjust
from tests.conftest import REPO, cli, make_las, write_config

spec = importlib.util.spec_from_file_location("make_building_data", REPO / "sample_configs/make_building_data.py")
building = importlib.util.module_from_spec(spec)
spec.loader.exec_module(building)

CONFIG = """
    version: 1
    stages:
      - type: source.files
        paths: ["{data}/*.laz"]
        metadata: {data}/capture.json
      - type: transform.align
        tag: align
        check_world: error
      - type: sink.overlap
        tag: overlap
        path: out/overlap.json
        corrections: out/corrections.json
        plot: out/overlap.png
"""


@pytest.fixture(scope="module")
def capture(tmp_path_factory):
    """The building with scan_03 displaced, and the truth."""
    folder = tmp_path_factory.mktemp("building")
    return folder, building.make(folder)


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("undisturbed")
    return folder, building.make(folder, displaced=False)


def run(folder, registry, data, jobs=1, executor=None, extra=""):
    path = write_config(folder, CONFIG.format(data=data) + extra)
    # spawned workers: this process has read LAZ before, and a process forked after lazrs's threads ran hangs
    runner = Runner(config.load(path, registry), registry, jobs=jobs, executor=executor, start_method="spawn")
    runner.run(runner.plan())
    return json.loads((folder / "out/overlap.json").read_text())


def by_names(report):
    return {(p["first"], p["second"]): p for p in report["pairs"]}


def rotation_degrees(matrix):
    return np.degrees(np.arccos(np.clip((np.trace(matrix[:3, :3]) - 1) / 2, -1, 1)))


def true_medians(truth, first, second, displacement, distance=0.10):
    """The median distance from each scan's points in the overlap to the other's surface, from the geometry: the
    points of `second` (moved by `displacement`, if it is the displaced one) and the true surface normals."""
    scans = {scan["name"]: scan for scan in truth["scans"]}
    moves = {name: np.eye(4) for name in scans}
    if truth["displaced"]:
        moves[truth["displaced"]["name"]] = displacement
    placed = {name: scans[name]["points"] @ moves[name][:3, :3].T + moves[name][:3, 3] for name in (first, second)}
    medians = []
    for one, other in ((first, second), (second, first)):
        search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(placed[other]))
        search.knn_index()
        _, squared = search.knn_search(o3d.core.Tensor(placed[one]), 1)
        near = np.sqrt(squared.numpy()[:, 0]) <= distance
        # a point of `one` on its true surface, seen against `other`'s surface moved by other·one⁻¹
        relative = moves[other] @ np.linalg.inv(moves[one])
        points, normals = placed[one][near], scans[one]["normals"][near] @ moves[one][:3, :3].T
        shifted = points @ relative[:3, :3].T + relative[:3, 3]
        medians.append(float(np.median(np.abs(np.einsum("ij,ij->i", shifted - points, normals)))))
    return medians


def test_the_pairs_with_the_displaced_scan_disagree_by_the_true_distances_and_the_correction_undoes_it(
        tmp_path, registry, capture):
    data, truth = capture
    report = run(tmp_path, registry, data)
    pairs = by_names(report)
    assert len(pairs) == 6
    disagreeing = sorted(key for key, pair in pairs.items() if pair["verdict"] == "disagrees")
    assert disagreeing == [("scan_01", "scan_03"), ("scan_02", "scan_03"), ("scan_03", "scan_04")]
    assert all(pair["verdict"] == "agrees" for key, pair in pairs.items() if "scan_03" not in key)
    displacement = np.array(truth["displaced"]["displacement"])
    for (first, second), pair in pairs.items():
        expected = true_medians(truth, first, second, displacement)
        measured = [pair["distances"]["first_to_second"]["median"], pair["distances"]["second_to_first"]["median"]]
        assert np.allclose(measured, expected, atol=0.01, rtol=0), (first, second, measured, expected)
        neighbours = (first, second) in (("scan_01", "scan_02"), ("scan_01", "scan_03"), ("scan_02", "scan_04"),
                                         ("scan_03", "scan_04"))
        shares = pair["overlap"].values()
        assert (0.3 <= min(shares) and max(shares) <= 0.6) if neighbours else (0.1 <= min(shares) <= max(shares) < 0.3)

    entries = {e["name"]: e for e in json.loads((tmp_path / "out/corrections.json").read_text())["items"]}
    assert {name: e["held_fixed"] for name, e in entries.items()} == {
        "scan_01": "in the largest group of items whose pairs agree",
        "scan_02": "in the largest group of items whose pairs agree",
        "scan_03": None, "scan_04": "in the largest group of items whose pairs agree"}
    assert [entries[name]["matrix"] for name in ("scan_01", "scan_02", "scan_04")] == [np.eye(4).tolist()] * 3
    assert entries["scan_03"]["sub"] == str(truth["displaced"]["id"])
    residual = np.array(entries["scan_03"]["matrix"]) @ displacement  # the correction after the displacement
    assert rotation_degrees(residual) < 0.02
    points = truth["scans"][2]["points"]
    assert np.linalg.norm(points @ residual[:3, :3].T + residual[:3, 3] - points, axis=1).max() < 0.005

    # the second run, with the corrections kept as a file of the user's: every pair agrees
    accepted = tmp_path / "accepted.json"
    shutil.copy(tmp_path / "out/corrections.json", accepted)
    assert run(tmp_path, registry, data) == report  # the same inputs and config: the same report
    corrected = write_config(tmp_path, CONFIG.format(data=data).replace(
        "        check_world: error\n", f"        check_world: error\n        corrections: {accepted}\n"))
    runner = Runner(config.load(corrected, registry), registry)
    results = runner.run(runner.plan())
    step = results.items[2].applied[-1]  # the report's record of scan_03's alignment: the correction, then all
    assert step["alignment"]["correction"] == {"file": str(accepted), "matrix": entries["scan_03"]["matrix"]}
    assert np.allclose(step["matrix"], np.array(entries["scan_03"]["matrix"]) @ np.array(step["alignment"]["world"]),
                       rtol=0, atol=1e-9)
    after = json.loads((tmp_path / "out/overlap.json").read_text())
    assert [pair["verdict"] for pair in after["pairs"]] == ["agrees"] * 6
    assert max(max(p["distances"]["first_to_second"]["median"], p["distances"]["second_to_first"]["median"])
               for p in after["pairs"]) < 0.005


def test_an_undisturbed_capture_agrees_everywhere_and_nothing_is_corrected(tmp_path, registry, undisturbed):
    data, _ = undisturbed
    report = run(tmp_path, registry, data)
    assert [pair["verdict"] for pair in report["pairs"]] == ["agrees"] * 6
    assert report["summary"] == {"pairs": 6, "agree": 6, "disagree": 0, "too_little_overlap": 0}
    for pair in report["pairs"]:
        assert pair["icp"]["moves_rms"] < 0.005 and pair["icp"]["rotation_degrees"] < 0.05
    entries = json.loads((tmp_path / "out/corrections.json").read_text())["items"]
    assert [e["matrix"] for e in entries] == [np.eye(4).tolist()] * 4


def plane(rng, x0, y0, count=4000):
    """A 4 m x 4 m floor and a wall, at UTM-sized coordinates."""
    floor = np.column_stack([x0 + rng.uniform(0, 4, count), y0 + rng.uniform(0, 4, count), np.full(count, 50.0)])
    wall = np.column_stack([x0 + rng.uniform(0, 4, count), np.full(count, y0), 50 + rng.uniform(0, 3, count)])
    return np.concatenate([floor, wall])


FILES = """
    version: 1
    stages:
      - type: source.files
        paths: [a.las, b.las, c.las]
      - type: sink.overlap
        path: out/overlap.json
        plot: out/overlap.png
"""


def test_scans_that_do_not_overlap_have_too_little_overlap_to_say(tmp_path, registry):
    rng = np.random.default_rng(5)
    make_las(tmp_path / "a.las", plane(rng, 500_000, 4_000_000))
    make_las(tmp_path / "b.las", plane(rng, 500_000, 4_000_000))  # the same place, sampled again
    make_las(tmp_path / "c.las", plane(rng, 500_100, 4_000_000))  # 100 m away
    runner = Runner(config.load(write_config(tmp_path, FILES), registry), registry)
    runner.run(runner.plan())
    report = json.loads((tmp_path / "out/overlap.json").read_text())
    pairs = by_names(report)
    assert pairs[("a", "b")]["verdict"] == "agrees"
    for key in (("a", "c"), ("b", "c")):
        assert pairs[key] == {"first": key[0], "second": key[1], "overlap": {"first": 0.0, "second": 0.0},
                              "distances": None, "icp": None, "verdict": "too little overlap"}
    assert [item["thinned_points"] <= item["points"] == 8000 for item in report["items"]] == [True] * 3


def test_the_picture_joins_the_overlapping_pairs_coloured_by_their_distance(tmp_path, registry, capture):
    data, _ = capture
    run(tmp_path, registry, data)
    image = Image.open(tmp_path / "out/overlap.png")
    layout = json.loads(image.text["cupix-pipeline"])
    pixels = np.asarray(image.convert("RGBA"))
    assert [entry["name"] for entry in layout["legend"]] == [
        "scan_01", "scan_02", "scan_03", "scan_04", "median 0 mm", "median 20 mm (tolerance)", "median 40 mm or more",
        "red edge: the pair disagrees"]
    for item in layout["items"]:  # each item's dot at its middle, in its colour
        x, y = map(round, item["at"])
        assert pixels[y, x].tolist() == item["colour"] + [255]
    assert len(layout["pairs"]) == 6
    labels = [line["label"]["box"] for line in layout["pairs"]]
    for line in layout["pairs"]:  # along each line, away from the dots and the labels: its colour
        (x1, y1), (x2, y2) = line["ends"]
        clear = [(x, y) for x, y in ((x1 + (x2 - x1) * t, y1 + (y2 - y1) * t) for t in np.linspace(0.15, 0.85, 15))
                 if not any(l - 4 <= x <= l + w + 4 and t - 4 <= y <= t + h + 4 for l, t, w, h in labels)]
        assert len(clear) >= 5
        assert [pixels[round(y), round(x)].tolist()[:3] for x, y in clear].count(line["colour"]) >= len(clear) - 2
    assert sorted(line["label"]["text"] for line in layout["pairs"]) == sorted(
        f"{max(p['distances']['first_to_second']['median'], p['distances']['second_to_first']['median']) * 1000:.1f} mm"
        for p in json.loads((tmp_path / "out/overlap.json").read_text())["pairs"])
    agreeing = [line for line in layout["pairs"] if line["verdict"] == "agrees"]
    assert all(line["colour"][1] > 120 and line["colour"][0] < 100 for line in agreeing)  # green: under 5 mm


def test_workers_and_dask_send_back_the_thinned_copies_and_the_report_is_the_same(tmp_path, registry, capture):
    from pipeline.executors import DaskExecutor
    data, _ = capture
    for name in ("one", "jobs", "dask"):
        (tmp_path / name).mkdir()
    alone = (tmp_path / "one/out/overlap.json", run(tmp_path / "one", registry, data))[1]
    assert run(tmp_path / "jobs", registry, data, jobs=2) == alone
    assert run(tmp_path / "dask", registry, data, executor=DaskExecutor(workers=2)) == alone
    for name in ("jobs", "dask"):
        assert (tmp_path / name / "out/overlap.json").read_bytes() == (tmp_path / "one/out/overlap.json").read_bytes()


def test_a_failing_check_fails_the_run_and_leaves_no_output(tmp_path, capture):
    data, _ = capture
    path = write_config(tmp_path, CONFIG.format(data=data) + "        fail_on_disagreement: true\n"
                        "      - type: sink.las\n        path: out/{name}.las\n")
    done = cli("run", path, "-q")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == ("error: stages[2] (sink.overlap, tag overlap): 3 pair(s) disagree by "
                                            "more than 20 mm (fail_on_disagreement: true)")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("option, value, message", [
    ("cell", "-0.05", "cell: expected a number of metres > 0, got -0.05"),
    ("path", "out/{name}.json", "path: one file is written for every item together: no {fields} in it"),
    ("plot", "out/overlap.jpg", "plot: expected a path ending in .png"),
    ("min_overlap", "1.5", "min_overlap: expected a number <= 1, got 1.5"),
])
def test_bad_options_are_one_line_errors(tmp_path, capture, option, value, message):
    data, _ = capture
    body = CONFIG.format(data=data).replace("        tag: overlap\n",
                                            f"        tag: overlap\n        {option}: {value}\n")
    body = body.replace(f"        {option}: out/overlap.json\n", "").replace("        plot: out/overlap.png\n", "") \
        if option in ("path", "plot") else body
    done = cli("validate", write_config(tmp_path, body))
    assert done.returncode == 1
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_an_unknown_fixed_item_is_refused_before_any_point_is_read(tmp_path, registry, capture):
    data, _ = capture
    path = write_config(tmp_path, CONFIG.format(data=data) + "        fixed: [scan_09]\n")
    with pytest.raises(PipelineError) as raised:
        Runner(config.load(path, registry), registry).plan()
    assert str(raised.value) == ("stages[2] (sink.overlap, tag overlap): fixed: no item is named scan_09 (the items: "
                                 "scan_01, scan_02, scan_03, scan_04)")


def test_corrections_that_are_not_rotations_or_lack_a_sub_are_refused_naming_the_file(tmp_path, registry, capture):
    data, _ = capture
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"items": [{"sub": "7103", "matrix": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                                                     [0, 0, 0, 1]]}]}))
    with pytest.raises(PipelineError) as raised:
        corrections_file.read(bad)
    assert str(raised.value) == f"{bad}: items[0] (sub 7103): the matrix is not a rotation and a translation"
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"items": [{"sub": "7101", "matrix": np.eye(4).tolist()}]}))
    path = write_config(tmp_path, CONFIG.format(data=data).replace(
        "        check_world: error\n", f"        check_world: error\n        corrections: {partial}\n"))
    with pytest.raises(PipelineError) as raised:
        Runner(config.load(path, registry), registry).plan()
    assert str(raised.value) == (f"stages[1] (transform.align, tag align): corrections: {partial} has no correction "
                                 "for sub 7102 (scan_02)")


def test_the_adjustment_holds_the_largest_agreeing_group_and_solves_a_chain_exactly():
    move = np.eye(4)
    move[:3, :3] = building.rotation((0, 0, 1), 0.5)
    move[:3, 3] = [0.1, -0.05, 0.02]
    names = ["a", "b", "c", "d"]
    # b displaced by `move`: the ICP of (a, b) brings b back by its inverse; (b, c) brings c onto the displaced b
    pairs = [{"a": 0, "b": 1, "verdict": "disagrees", "matrix": np.linalg.inv(move)},
             {"a": 1, "b": 2, "verdict": "disagrees", "matrix": move},
             {"a": 2, "b": 3, "verdict": "agrees", "matrix": np.eye(4)},
             {"a": 0, "b": 3, "verdict": "agrees", "matrix": np.eye(4)}]
    matrices, why = adjust(names, pairs)
    assert sorted(why) == [0, 2, 3]
    assert np.allclose(matrices[1], np.linalg.inv(move), atol=1e-12)
    matrices, why = adjust(names, pairs[:2])  # no pair agrees: the first item is held, the rest follow
    assert why == {0: "the earliest of a group that overlaps no item held fixed", 3: "overlaps no other item"}
    assert np.allclose(matrices[1], np.linalg.inv(move), atol=1e-12) and np.allclose(matrices[2], np.eye(4))


def test_the_sample_config_shows_the_disagreement_offline_and_its_data_and_picture_are_up_to_date(tmp_path,
                                                                                                 demo_copy):
    done = cli("run", demo_copy / "overlap.yaml", "-q")
    assert done.returncode == 0, done.stderr
    out = demo_copy.parent / "out/overlap"
    report = json.loads((out / "overlap.json").read_text())
    assert report["summary"] == {"pairs": 6, "agree": 3, "disagree": 3, "too_little_overlap": 0}
    assert sorted(f"{p['first']} and {p['second']} disagree" for p in report["pairs"] if p["verdict"] == "disagrees") \
        == [line.split(": ", 2)[2].split(":")[0] for line in done.stderr.splitlines() if line.startswith("warning")]
    # the README shows this picture, and the committed data is what the script makes
    assert (out / "overlap.png").read_bytes() == (REPO / "sample_configs/overlap.png").read_bytes()
    building.make(tmp_path / "made")
    committed = REPO / "sample_configs/data/building"
    assert sorted(p.name for p in committed.iterdir()) == sorted(p.name for p in (tmp_path / "made").iterdir())
    for path in committed.iterdir():
        assert path.read_bytes() == (tmp_path / "made" / path.name).read_bytes(), path.name


def floor(rng, x0, count=20000):
    """A 4 m x 4 m patch of floor with 2 mm of noise: all ICP can fix on it is height and tilt."""
    return np.column_stack([x0 + rng.uniform(0, 4, count), 4_000_000 + rng.uniform(0, 4, count),
                            50 + rng.normal(0, 0.002, count)])


def test_a_pair_that_overlaps_on_a_floor_only_is_judged_by_its_distances_and_corrects_nothing(tmp_path, registry):
    rng = np.random.default_rng(8)
    make_las(tmp_path / "a.las", floor(rng, 500_000))
    make_las(tmp_path / "b.las", floor(rng, 500_002))  # the same floor, half of it, sampled again
    make_las(tmp_path / "c.las", floor(rng, 500_003.95, count=60))  # 1 cm of it in b's: under MIN_POINTS
    body = FILES.replace("        plot: out/overlap.png\n", "        corrections: out/corrections.json\n")
    runner = Runner(config.load(write_config(tmp_path, body), registry), registry)
    runner.run(runner.plan())
    pairs = by_names(json.loads((tmp_path / "out/overlap.json").read_text()))
    assert pairs[("a", "b")]["verdict"] == "agrees"
    assert pairs[("a", "b")]["icp"]["constrained"] is False and pairs[("a", "b")]["icp"]["conditioning"] < 0.001
    assert pairs[("b", "c")]["verdict"] == "too little overlap" and pairs[("b", "c")]["overlap"]["second"] > 0
    entries = json.loads((tmp_path / "out/corrections.json").read_text())
    assert [e["matrix"] for e in entries["items"]] == [np.eye(4).tolist()] * 3 and entries["unresolved"] == []


def test_a_disagreement_between_two_items_held_fixed_is_said_and_listed(tmp_path, registry, capture, caplog):
    data, _ = capture
    with caplog.at_level("WARNING"):
        run(tmp_path, registry, data, extra="        fixed: [scan_03]\n")
    unresolved = json.loads((tmp_path / "out/corrections.json").read_text())["unresolved"]
    assert unresolved == ["scan_01 and scan_03", "scan_02 and scan_03", "scan_03 and scan_04"]
    assert ("stages[2] (sink.overlap, tag overlap): scan_01 and scan_03 disagree but both are held fixed: the "
            "corrections leave that as it is") in caplog.messages


def test_a_file_it_cannot_write_is_one_line_and_leaves_no_output(tmp_path, capture):
    data, _ = capture
    (tmp_path / "blocked").write_text("a file where a folder should be")
    path = write_config(tmp_path, CONFIG.format(data=data).replace("plot: out/overlap.png", "plot: blocked/o.png"))
    done = cli("run", path, "-q")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        f"error: stages[2] (sink.overlap, tag overlap): cannot write {tmp_path}/out/overlap.json, "
        f"{tmp_path}/blocked/o.png, {tmp_path}/out/corrections.json: {tmp_path}/blocked is a file, not a folder")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_sub_listed_twice_in_corrections_is_refused(tmp_path):
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"items": [{"sub": "7101", "matrix": np.eye(4).tolist()},
                                           {"sub": 7101, "matrix": np.eye(4).tolist()}]}))
    with pytest.raises(PipelineError) as raised:
        corrections_file.read(twice)
    assert str(raised.value) == f"{twice}: items[1]: sub 7101 has a correction already: one entry a sub"
