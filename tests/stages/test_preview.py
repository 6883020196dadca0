"""sink.preview: known geometry drawn where it belongs, in the colours it should have; what the picture says
around it (legend, colour bar, scale bar, corners); the options refused; the same bytes on every run."""
import json
import logging
import struct
import zlib

import laspy
import numpy as np
import pytest
from PIL import Image

from pipeline import config
from pipeline.errors import ConfigError, SinkError
from pipeline.model import Bounds
from stages.preview import CLASSES, ITEM_COLOURS, PNG_KEY, VIRIDIS, Panel, panels_of, ramp
from tests.conftest import make_las, run, write_config

E, N = 500_000.0, 4_000_000.0  # UTM-sized, as surveys are


def square(x0, y0, z, side=10.0, step=0.25):
    """Points on a grid filling [x0, x0 + side) × [y0, y0 + side) at height z (offset to E, N)."""
    u, v = np.meshgrid(np.arange(0, side, step), np.arange(0, side, step))
    return np.column_stack([E + x0 + u.ravel(), N + y0 + v.ravel(), np.full(u.size, float(z))])


def sink(path="out/picture.png", **options):
    lines = "".join(f"\n            {key}: {value}" for key, value in options.items())
    return f"""
          - type: sink.preview
            path: {path}{lines}"""


def draw(folder, registry, paths, **options):
    """Runs the files through sink.preview; the picture (RGBA pixels) and its layout."""
    run(folder, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: {json.dumps([str(p) for p in paths])}""" + sink(**options))
    return read(folder / "out" / "picture.png")


def read(path):
    image = Image.open(path)
    image.load()
    return np.asarray(image.convert("RGBA")), json.loads(image.text[PNG_KEY])


def at(pixels, layout, u, v, panel=0):
    """The pixel that shows the world point (u, v) of a panel's two axes (x from E, y from N, z as it is)."""
    place = layout["panels"][panel]
    left, top, width, height = place["box"]
    origin = {"x": E, "y": N, "z": 0.0}
    across, up = place["axes"]
    u0, v0 = place["lower_left"]
    column = int(np.floor((origin[across] + u - u0) / place["resolution"]))
    row = int(np.floor((v0 + height * place["resolution"] - origin[up] - v) / place["resolution"]))
    assert 0 <= column < width and 0 <= row < height
    return tuple(int(value) for value in pixels[top + row, left + column])


@pytest.fixture
def squares(tmp_path):
    """Two 10 m squares 10 m apart: a.las at z 1, b.las at z 2, with classes 2 and 6, intensities 100 and 1100,
    16-bit colours (red) and 8-bit ones kept in 16 bits (blue)."""
    a, b = square(0, 0, 1), square(20, 0, 2)
    make_las(tmp_path / "a.las", a, classification=np.full(len(a), 2), intensity=np.full(len(a), 100),
             red=np.full(len(a), 65535), green=np.full(len(a), 0), blue=np.full(len(a), 257 * 10))
    make_las(tmp_path / "b.las", b, classification=np.full(len(b), 6), intensity=np.full(len(b), 1100),
             red=np.full(len(b), 0), green=np.full(len(b), 0), blue=np.full(len(b), 200))
    return tmp_path


# --- where the points go, and in which colours ---------------------------------------------------------


def test_two_squares_are_drawn_in_their_item_colours_at_their_places(squares, registry):
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.5)
    panel = layout["panels"][0]
    assert panel["lower_left"] == [E, N] and panel["resolution"] == 0.5
    assert panel["box"][2:] == [60, 20]  # 29.75 m × 9.75 m of 0.5 m pixels, the far edges in the last ones
    red, green = ITEM_COLOURS[0] + (255,), ITEM_COLOURS[1] + (255,)
    for x in (0.1, 5, 9.9):
        for y in (0.1, 5, 9.6):
            assert at(pixels, layout, x, y) == red
            assert at(pixels, layout, x + 20, y) == green
    assert at(pixels, layout, 15, 5) == (0, 0, 0, 0)  # between them: transparent
    left, top, width, height = panel["box"]
    inside = pixels[top:top + height, left:left + width]
    assert np.count_nonzero(inside[..., 3] == 255) == 2 * 20 * 20 and set(np.unique(inside[..., 3])) == {0, 255}
    assert [(e["name"], e["colour"]) for e in layout["legend"]] == [("a", list(ITEM_COLOURS[0])), ("b", list(ITEM_COLOURS[1]))]
    for entry in layout["legend"]:
        x, y, w, h = entry["box"]
        assert tuple(pixels[y + h // 2, x + w // 2]) == tuple(entry["colour"]) + (255,)
    assert layout["title"] == "picture"
    assert layout["subtitle"] == "2 items, 3,200 points seen from above, colour: item, 0.5 m a pixel"


def test_size_is_the_longer_side(squares, registry):
    _, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", size=119)
    panel = layout["panels"][0]
    assert panel["box"][2:] == [119, 39] and panel["resolution"] == pytest.approx(29.75 / 119)


@pytest.mark.parametrize("order", ["low first", "high first"])
def test_the_highest_point_wins_a_pixel_whatever_the_order(tmp_path, registry, order):
    low, high = square(0, 0, 1), square(5, 0, 3, side=5)  # high covers the right half of low
    make_las(tmp_path / "1.las", low if order == "low first" else high)
    make_las(tmp_path / "2.las", high if order == "low first" else low)
    pixels, layout = draw(tmp_path, registry, [tmp_path / "1.las", tmp_path / "2.las"], merge="true", resolution=0.5)
    colour = {name: ITEM_COLOURS[index] + (255,) for index, name in enumerate(["1", "2"])}
    high_item, low_item = ("2", "1") if order == "low first" else ("1", "2")
    assert at(pixels, layout, 2, 2) == colour[low_item]
    assert at(pixels, layout, 7, 2) == colour[high_item]


def test_the_highest_point_of_one_chunk_wins_wherever_it_is_in_it(tmp_path, registry):
    xyz = np.array([[E + 0.1, N + 0.1, 5.0], [E + 0.2, N + 0.2, 1.0], [E + 0.3, N + 0.3, 3.0],  # pixel (0, 0)
                    [E + 2.1, N + 0.1, 1.0], [E + 2.2, N + 0.2, 5.0], [E + 2.3, N + 0.3, 3.0],  # pixel (2, 0)
                    [E + 4.1, N + 0.1, 1.0], [E + 4.2, N + 0.2, 3.0], [E + 4.3, N + 0.3, 5.0],  # pixel (4, 0)
                    [E + 4.9, N + 0.9, 0.0]])
    make_las(tmp_path / "p.las", xyz, classification=np.array([6, 2, 9, 2, 6, 9, 2, 9, 6, 2]))
    pixels, layout = draw(tmp_path, registry, [tmp_path / "p.las"], color="classification", resolution=1)
    building = CLASSES[6][1] + (255,)
    for x in (0.5, 2.5, 4.5):
        assert at(pixels, layout, x, 0.5) == building
    assert at(pixels, layout, 1.5, 0.5)[3] == 0 and at(pixels, layout, 3.5, 0.5)[3] == 0
    assert [e["name"] for e in layout["legend"]] == ["6 building"]  # the classes shown, not those hidden


def test_elevation_colours_and_colour_bar(squares, registry):
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.5,
                          color="elevation")
    assert at(pixels, layout, 5, 5) == tuple(VIRIDIS[0]) + (255,)
    assert at(pixels, layout, 25, 5) == tuple(VIRIDIS[-1]) + (255,)
    bar = layout["colour_bar"]
    assert (bar["heading"], bar["low"], bar["high"], bar["labels"]) == ("height (m)", 1.0, 2.0, ["2.00", "1.50", "1.00"])
    x, y, w, h = bar["box"]  # inside its 1-pixel outline: viridis from the top (high) to the bottom (low)
    assert np.abs(pixels[y + 1, x + w // 2, :3].astype(int) - VIRIDIS[-1]).max() <= 6
    assert np.abs(pixels[y + h - 2, x + w // 2, :3].astype(int) - VIRIDIS[0]).max() <= 6


def test_intensity_is_grey_between_its_2nd_and_98th_percentiles(squares, registry):
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.5,
                          color="intensity")
    assert at(pixels, layout, 5, 5) == (0, 0, 0, 255) and at(pixels, layout, 25, 5) == (255, 255, 255, 255)
    assert layout["colour_bar"]["labels"] == ["1100", "600", "100"]


def test_classification_uses_the_asprs_colours_with_a_legend(squares, registry):
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.5,
                          color="classification")
    assert at(pixels, layout, 5, 5) == CLASSES[2][1] + (255,) and at(pixels, layout, 25, 5) == CLASSES[6][1] + (255,)
    assert [(e["name"], tuple(e["colour"])) for e in layout["legend"]] == [("2 ground", CLASSES[2][1]),
                                                                           ("6 building", CLASSES[6][1])]


def test_rgb_scales_16_bit_colours_and_keeps_8_bit_ones(squares, registry):
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.5,
                          color="rgb")
    assert at(pixels, layout, 5, 5) == (255, 0, 10, 255)  # a.las uses 16 bits: 65535 and 2570 divided by 257
    assert at(pixels, layout, 25, 5) == (0, 0, 200, 255)  # b.las holds 8-bit values: kept as they are


def test_rgb_for_an_item_without_colours_is_an_error_before_any_point(tmp_path, registry):
    make_las(tmp_path / "plain.las", square(0, 0, 1), point_format=1)
    for merge in ("false", "true"):
        with pytest.raises(SinkError) as error:
            draw(tmp_path, registry, [tmp_path / "plain.las"], color="rgb", merge=merge)
        assert str(error.value).startswith("stages[1] (sink.preview): plain: color: rgb needs red, green, blue, and plain "
                                           "has no red, green, blue (its attributes: intensity, ")
    assert not (tmp_path / "out" / "picture.png").exists()


def test_side_view_shows_the_point_nearest_the_viewer(tmp_path, registry):
    # two points behind each other seen from -y (x-z panel) and from +x (y-z panel)
    xyz = np.array([[E + 1.5, N + 1.5, 0.5], [E + 1.5, N + 3.5, 0.5], [E + 3.5, N + 1.5, 0.5], [E + 0.0, N + 0.0, 0.0],
                    [E + 4.0, N + 4.0, 2.0]])
    make_las(tmp_path / "s.las", xyz, classification=np.array([2, 6, 9, 1, 1]))
    pixels, layout = draw(tmp_path, registry, [tmp_path / "s.las"], color="classification", view="side", resolution=1)
    front, right = layout["panels"]
    assert (front["axes"], right["axes"]) == (["x", "z"], ["y", "z"])
    assert front["label"] == "x-z, looking along +y" and right["label"] == "y-z, looking along -x"
    assert at(pixels, layout, 1.5, 0.5, panel=0) == CLASSES[2][1] + (255,)  # y 1.5 hides y 3.5
    assert at(pixels, layout, 1.5, 0.5, panel=1) == CLASSES[9][1] + (255,)  # x 3.5 hides x 1.5
    assert at(pixels, layout, 3.5, 0.5, panel=1) == CLASSES[6][1] + (255,)


def test_the_scale_bar_is_as_long_as_its_label_says(squares, registry):
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.125)
    bar = layout["scale_bar"]
    assert (bar["metres"], bar["label"]) == (5.0, "5 m")  # at most a quarter of the 29.75 m shown
    x, y, width, height = bar["box"]
    assert width == 5.0 / 0.125
    row = pixels[y + height // 2]
    dark = (row[:, :3].max(axis=1) < 60) & (row[:, 3] == 255)
    assert not dark[x - 1] and dark[x:x + 40].all() and not dark[x + 40]  # one run of exactly 40 pixels


def test_corner_coordinates_are_those_of_the_panel(squares, registry):
    _, layout = draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", resolution=0.5)
    panel = layout["panels"][0]
    assert panel["lower_left"] == [E, N] and panel["upper_right"] == [E + 30, N + 10]


def test_an_item_with_no_points_gives_an_empty_picture_and_one_line(tmp_path, registry, caplog):
    make_las(tmp_path / "none.las", np.empty((0, 3)), offset=(0, 0, 0))
    with caplog.at_level(logging.INFO):
        pixels, layout = draw(tmp_path, registry, [tmp_path / "none.las"])
    lines = [r.getMessage() for r in caplog.records if r.name == "stages.preview"]
    assert lines == ["stages[1] (sink.preview): none: no points: the picture is empty"]
    assert layout["panels"] == [] and layout["title"] == "none" and layout["subtitle"].endswith("(no points)")
    assert pixels[..., 3].max() == 255 and pixels[-1, -1, 3] == 0  # the title, on transparency


def test_merged_legend_lists_every_item_even_one_without_points(squares, registry):
    make_las(squares / "c.las", np.empty((0, 3)), offset=(0, 0, 0))
    pixels, layout = draw(squares, registry, [squares / "a.las", squares / "c.las", squares / "b.las"], merge="true",
                          resolution=0.5)
    assert [e["name"] for e in layout["legend"]] == ["a", "c", "b"]
    assert at(pixels, layout, 25, 5) == ITEM_COLOURS[2] + (255,)  # b is the third item


def test_one_picture_per_item_each_in_its_colour(squares, registry):
    run(squares, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [a.las, b.las]""" + sink(path="out/{name}.png", resolution=0.5))
    for index, name in enumerate(["a", "b"]):
        pixels, layout = read(squares / "out" / f"{name}.png")
        assert layout["title"] == name and [e["name"] for e in layout["legend"]] == [name]
        assert layout["panels"][0]["box"][2:] == [20, 20]
        assert at(pixels, layout, 5 + 20 * index, 5) == ITEM_COLOURS[index] + (255,)


def test_a_merging_writer_draws_each_chunk_in_the_colour_of_the_item_the_engine_says_it_is_from(tmp_path):
    from pipeline.chunk import Chunk
    from pipeline.model import Item, StreamInfo
    from pipeline.staging import Staging
    from stages.preview import PreviewSink

    preview = PreviewSink({"path": str(tmp_path / "p.png"), "size": None, "resolution": 1.0, "color": "item",
                           "view": "top", "merge": True}, label="stages[1] (sink.preview)")
    points = np.zeros(2, [("x", "f8"), ("y", "f8"), ("z", "f8")])
    items = [Item(id=n, name=n, index=i, location=n) for i, n in enumerate(["a", "b"])]
    infos = [StreamInfo(dtype=points.dtype, source_format="las", bounds=Bounds((E, N, 0), (E + 30, N + 10, 0)))] * 2
    merged = Item(id="merged", name="merged", index=-1, location="merged items")
    staging = Staging(checksums=False)
    points["y"] = N + 5
    writer = preview.open(merged, preview.merged_info(items, infos), staging)
    for item, xs in zip(items, ([0, 1], [28, 29])):
        writer.start_item(item)
        points["x"] = E + np.array(xs)
        writer.write(writer.prepare(Chunk.of(points)))
    writer.close()
    pixels, layout = read(staging.temporary(tmp_path / "p.png"))
    assert tuple(at(pixels, layout, 0, 5)) == ITEM_COLOURS[0] + (255,)
    assert tuple(at(pixels, layout, 28, 5)) == ITEM_COLOURS[1] + (255,)


@pytest.mark.parametrize("color", ["item", "elevation", "intensity", "classification", "rgb"])
def test_an_item_without_bounds_is_kept_aside_and_drawn_as_from_las(tmp_path, registry, caplog, color):
    (tmp_path / "ply").mkdir()
    (tmp_path / "las").mkdir()
    xyz = np.concatenate([square(0, 0, 1), square(2, 2, 3, side=4)])  # a higher square on a lower one
    count = len(xyz)
    fields = {"intensity": np.arange(count) % 1000, "classification": np.arange(count) % 7,
              "red": np.arange(count) * 7 % 65536, "green": np.arange(count) * 13 % 65536,
              "blue": np.arange(count) * 29 % 65536}
    las = laspy.read(make_las(tmp_path / "las" / "square.las", xyz, **fields))
    records = np.zeros(count, [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("intensity", "<u2"),
                               ("classification", "u1"), ("red", "<u2"), ("green", "<u2"), ("blue", "<u2")])
    for name in records.dtype.names:
        records[name] = las[name]  # the very coordinates and values the LAS file gives
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {count}\n" + "".join(
        f"property {ply_type} {name}\n" for name, ply_type in [("x", "double"), ("y", "double"), ("z", "double"),
                                                               ("intensity", "ushort"), ("classification", "uchar"),
                                                               ("red", "ushort"), ("green", "ushort"),
                                                               ("blue", "ushort")]) + "end_header\n")
    (tmp_path / "ply" / "square.ply").write_bytes(header.encode() + records.tobytes())
    with caplog.at_level(logging.INFO):
        draw(tmp_path / "ply", registry, [tmp_path / "ply" / "square.ply"], resolution=0.5, color=color)
    assert "stages[1] (sink.preview): square: the bounds are not known before the points: they are kept in a " \
           "temporary file and drawn at the end" in [r.getMessage() for r in caplog.records]
    draw(tmp_path / "las", registry, [tmp_path / "las" / "square.las"], resolution=0.5, color=color)
    assert (tmp_path / "ply/out/picture.png").read_bytes() == (tmp_path / "las/out/picture.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "ply/out").iterdir()) == ["picture.png"]  # nothing left beside it


def test_the_same_run_gives_the_same_bytes_and_no_time_in_the_png(squares, registry):
    draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", color="elevation")
    first = (squares / "out/picture.png").read_bytes()
    (squares / "out/picture.png").unlink()
    draw(squares, registry, [squares / "a.las", squares / "b.las"], merge="true", color="elevation")
    assert (squares / "out/picture.png").read_bytes() == first
    kinds, data, at_ = [], b"", 8
    while at_ < len(first):
        length, kind = struct.unpack(">I4s", first[at_:at_ + 8])
        assert zlib.crc32(first[at_ + 4:at_ + 8 + length]) == struct.unpack(">I", first[at_ + 8 + length:at_ + 12 + length])[0]
        kinds.append(kind.decode())
        data += first[at_ + 8:at_ + 8 + length] if kind == b"IDAT" else b""
        at_ += 12 + length
    assert kinds[:2] == ["IHDR", "iTXt"] and kinds[-1] == "IEND" and set(kinds[2:-1]) == {"IDAT"}
    width, height = struct.unpack(">II", first[16:24])
    assert len(zlib.decompress(data)) == height * (width * 4 + 1)  # one stream of its segments, its Adler-32 right


# --- geometry --------------------------------------------------------------------------------------------


def test_points_outside_the_declared_bounds_are_left_out_not_smeared_on_the_edge():
    panel = Panel("", 0, 1, 2, False, 0.0, 0.0, 0.0, 1.0, 4, 2)
    xyz = np.array([[0.5, 3.5, 4.4, 9.0, -0.6], [0.5, 1.5, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0, 5.0]])
    pixel, key, keep = panel.locate(xyz)
    assert keep.tolist() == [True, True, True, False, False]  # 4.4 is within half a pixel: the edge pixel
    assert pixel.tolist() == [4 + 0, 0 + 3, 1 * 4 + 3] and key.tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("points, pixels", [(65_536, 4_000_000), (65_536, 1_000), (1_000, 3)])
def test_keep_largest_keeps_what_numpy_maximum_at_keeps(points, pixels):
    from stages.preview import EMPTY, keep_largest, packed
    rng = np.random.default_rng(points + pixels)
    buffer = np.full(pixels, EMPTY, np.int64)
    buffer[::3] = rng.integers(-(1 << 62), 1 << 62, len(buffer[::3]))  # some pixels already drawn
    expected = buffer.copy()
    for _ in range(3):
        pixel = rng.integers(0, pixels, points)
        keyed = packed(rng.choice(np.float32([-1.5, 0.0, 2.25, 7.0]), points), rng.integers(0, 4, points))  # ties
        np.maximum.at(expected, pixel, keyed)
        keep_largest(buffer, pixel, keyed)
        assert np.array_equal(buffer, expected)


@pytest.mark.parametrize("order", [1, -1])
def test_keep_largest_of_points_in_rising_or_falling_order_in_one_pixel(order):
    from stages.preview import EMPTY, keep_largest, packed
    heights = np.arange(512, dtype=np.float32)[::order]  # a scan line down (or up) a wall, seen from above
    pixel = np.repeat(np.arange(128), 512)
    keyed = packed(np.tile(heights, 128), np.arange(len(pixel)) % 5)
    buffer = np.full(200, EMPTY, np.int64)
    keep_largest(buffer, pixel, keyed)
    assert np.array_equal(buffer[:128], keyed.reshape(128, 512).max(axis=1)) and (buffer[128:] == EMPTY).all()


def test_eight_bit_colours_are_those_of_dividing_by_257_and_rounding():
    from stages.preview import eight_bit
    values = np.arange(65536)
    assert np.array_equal(eight_bit(values, True), np.round(values / 257))
    assert np.array_equal(eight_bit(values, False), np.minimum(values, 255))


def test_a_resolution_too_fine_for_the_extent_is_refused():
    with pytest.raises(ValueError, match=r"^0.001 m a pixel gives a picture of 1,000,000 × 500,000 pixels, more than "
                                         r"67,108,864: choose a coarser resolution, or a size$"):
        panels_of(Bounds((0, 0, 0), (1000, 500, 10)), resolution=0.001)


def test_ramp_runs_through_the_stops():
    table = ramp(VIRIDIS)
    assert tuple(table[0, :3]) == VIRIDIS[0] and tuple(table[255, :3]) == VIRIDIS[-1] and len(table) == 256


# --- options -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"size": 0}, "stages[1] (sink.preview) > size: expected an integer >= 16 and <= 16384, got 0"),
    ({"color": "heigth"}, "stages[1] (sink.preview) > color: expected one of item, elevation, intensity, classification, "
                          "rgb, got 'heigth'"),
    ({"color": "classfication"}, "stages[1] (sink.preview) > color: expected one of item, elevation, intensity, "
                                 "classification, rgb, got 'classfication'; did you mean 'classification'?"),
    ({"size": 512, "resolution": 0.1}, "stages[1] (sink.preview) > resolution: give size or resolution, not both"),
    ({"resolution": 0}, "stages[1] (sink.preview) > resolution: expected a number of metres > 0, got 0"),
    ({"view": "front"}, "stages[1] (sink.preview) > view: expected one of top, side, got 'front'"),
    ({"path": "out/a.jpg"}, "stages[1] (sink.preview) > path: expected a path ending in .png"),
])
def test_bad_options_are_one_line_errors(tmp_path, registry, options, message):
    lines = "".join(f"\n            {key}: {value}" for key, value in {"path": "out/{name}.png", **options}.items())
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [a.las]
          - type: sink.preview""" + lines)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry)
    assert len(error.value.problems) == 1
    assert error.value.problems[0].split(": ", 1)[1] == message


def test_the_png_bytes_do_not_depend_on_the_encoding_threads(tmp_path):
    from stages.preview import SEGMENT, compose, write_png
    panel = Panel("", 0, 1, 2, False, 0.0, 0.0, 0.0, 0.5, 300, 2 * SEGMENT + 17)  # three segments and some
    pixels = np.random.default_rng(1).integers(0, 256, (panel.height, panel.width, 4), dtype=np.uint8)
    sheet, layout = compose("threads", "the same bytes", [panel])
    done = [write_png(tmp_path / f"{n}.png", sheet, [(layout["panels"][0]["box"], lambda a, b: pixels[a:b])], layout,
                      threads=n) for n in (1, 2, 3)]
    assert (tmp_path / "1.png").read_bytes() == (tmp_path / "2.png").read_bytes() == (tmp_path / "3.png").read_bytes()
    assert done[0] == done[1] == done[2] and done[0][0] == (tmp_path / "1.png").stat().st_size
    left, top, width, height = layout["panels"][0]["box"]
    assert np.array_equal(read_pixels(tmp_path / "1.png")[top:top + height, left:left + width], pixels)


def read_pixels(path):
    image = Image.open(path)
    image.load()
    return np.asarray(image)
