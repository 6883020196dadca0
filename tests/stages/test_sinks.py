"""sink.las options (version, scale, offset, merge) and sink.ply options (offset, colors, merge)."""
import hashlib
import json
import logging

import laspy
import numpy as np
import open3d
import pytest

from pipeline import config
from pipeline.errors import PipelineError, SinkError
from pipeline.runner import Runner
from stages.ply import ColourDepth
from tests.conftest import cli, make_las, ply_run, run, write_config
from tests.plyfile_plain import read_plain_ply


def las_values(data, name):
    return np.asarray(data[name])


# --- sink.las: version -------------------------------------------------------------------------------------


def test_version_1_4_on_a_1_2_input_keeps_every_value(tmp_path, registry, conformance):
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'las/simple.las'}"]
          - type: sink.las
            path: out/{{name}}.las
            version: 1.4
    """)
    original = laspy.read(conformance / "las/simple.las")
    written = laspy.read(tmp_path / "out/simple.las")
    assert str(original.header.version) == "1.2"
    assert str(written.header.version) == "1.4"
    assert written.point_format.id == original.point_format.id == 3
    assert written.header.point_count == 1065
    assert written.header.scales.tolist() == original.header.scales.tolist()
    assert written.header.offsets.tolist() == original.header.offsets.tolist()
    for name in original.point_format.dimension_names:
        assert np.array_equal(las_values(written, name), las_values(original, name)), name
    assert written.header.mins.tolist() == original.header.mins.tolist()
    assert written.header.maxs.tolist() == original.header.maxs.tolist()


def test_version_1_2_on_point_format_6_is_an_error(tmp_path, registry, conformance):
    with pytest.raises(SinkError) as error:
        run(tmp_path, registry, f"""
            version: 1
            stages:
              - type: source.files
                paths: ["{conformance / 'las/test1_4.las'}"]
              - type: sink.las
                path: out/{{name}}.las
                version: 1.2
        """)
    assert str(error.value) == "stages[1] (sink.las): test1_4: point format 6 needs LAS 1.4; set `version: 1.4`"
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def make_las_with_evlr(path):
    header = laspy.LasHeader(version="1.4", point_format=1)
    header.scales = np.array([0.001] * 3)
    header.offsets = np.zeros(3)
    data = laspy.LasData(header)
    data.x, data.y, data.z = np.array([1.0, 2.5]), np.array([3.0, 4.25]), np.array([5.0, 6.125])
    data.intensity = np.array([7, 8])
    data.gps_time = np.array([1.5, 2.5])
    from laspy.vlrs.vlrlist import VLRList
    data.evlrs = VLRList([laspy.VLR(user_id="cupix_test", record_id=42, description="an evlr",
                                    record_data=b"hello evlr")])
    data.write(str(path))
    assert len(laspy.read(path).evlrs) == 1
    return path


def test_evlrs_are_dropped_with_a_warning_when_writing_1_2(tmp_path, registry, caplog):
    make_las_with_evlr(tmp_path / "evlr.las")
    with caplog.at_level(logging.WARNING):
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [evlr.las]
              - type: sink.las
                path: out/{name}.las
                version: 1.2
        """)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "stages[1] (sink.las): evlr: 1 EVLR(s) dropped: LAS 1.2 has no EVLRs"]
    written = laspy.read(tmp_path / "out/evlr.las")
    assert str(written.header.version) == "1.2" and written.point_format.id == 1
    assert not written.evlrs
    assert np.asarray(written.x).tolist() == [1.0, 2.5] and np.asarray(written.z).tolist() == [5.0, 6.125]
    assert written.intensity.tolist() == [7, 8] and written.gps_time.tolist() == [1.5, 2.5]


def test_evlrs_are_kept_when_writing_1_4(tmp_path, registry):
    make_las_with_evlr(tmp_path / "evlr.las")
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [evlr.las]
          - type: sink.las
            path: out/{name}.las
    """)
    written = laspy.read(tmp_path / "out/evlr.las")
    assert str(written.header.version) == "1.4"
    assert [(e.user_id, e.record_id, bytes(e.record_data)) for e in written.evlrs] == [
        ("cupix_test", 42, b"hello evlr")]
    assert np.asarray(written.y).tolist() == [3.0, 4.25]


# --- sink.las: scale and offset ----------------------------------------------------------------------------


@pytest.fixture
def fine_las(tmp_path):
    rng = np.random.default_rng(3)
    xyz = np.round(rng.uniform([1000, 2000, -3], [1010, 2010, 3], (500, 3)), 4)
    make_las(tmp_path / "fine.las", xyz, scale=0.0001, point_format=0, intensity=np.arange(500) % 7)
    return laspy.read(tmp_path / "fine.las")


@pytest.mark.parametrize("option, scales", [("0.01", [0.01, 0.01, 0.01]),
                                            ("[0.01, 0.01, 0.001]", [0.01, 0.01, 0.001])])
def test_scale_option_sets_the_grid(tmp_path, registry, fine_las, option, scales):
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [fine.las]
          - type: sink.las
            path: out/{{name}}.las
            scale: {option}
    """)
    written = laspy.read(tmp_path / "out/fine.las")
    assert written.header.scales.tolist() == scales
    offsets = written.header.offsets
    assert offsets.tolist() == fine_las.header.offsets.tolist() == [1000.0, 2000.0, -3.0]
    for index, (axis, integers) in enumerate(zip("xyz", (written.X, written.Y, written.Z))):
        original = las_values(fine_las, axis)
        assert np.array_equal(integers, np.round((original - offsets[index]) / scales[index]).astype(np.int64)), axis
        assert np.abs(las_values(written, axis) - original).max() <= scales[index] / 2 + 1e-9, axis
    assert np.array_equal(written.intensity, fine_las.intensity)


def test_offset_option_is_used_as_given(tmp_path, registry, conformance):
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'las/simple.las'}"]
          - type: sink.las
            path: out/{{name}}.las
            offset: [637000, 849000, 400.5]
    """)
    original = laspy.read(conformance / "las/simple.las")
    written = laspy.read(tmp_path / "out/simple.las")
    assert written.header.offsets.tolist() == [637000.0, 849000.0, 400.5]
    assert written.header.scales.tolist() == [0.01] * 3
    for axis in "xyz":
        assert np.abs(las_values(written, axis) - las_values(original, axis)).max() < 1e-6, axis
    assert np.array_equal(written.X, np.round((original.x - 637000) / 0.01).astype(np.int64))


# --- sink.las / sink.ply: merge ----------------------------------------------------------------------------

LAS_XYZ = np.array([[1000.25, 2000.5, 10.0], [1005.125, 2003.75, 12.5], [1010.0, 2001.0, 11.0]])
PLY_TEXT = ("ply\nformat ascii 1.0\nelement vertex 2\nproperty double x\nproperty double y\nproperty double z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
            "500.5 1500.25 5 255 128 0\n501.001 1501 6.5 1 2 3\n")
PLY_XYZ = np.array([[500.5, 1500.25, 5.0], [501.001, 1501.0, 6.5]])

MERGE_CONFIG = """
    version: 1
    stages:
      - type: source.files
        paths: [a.las, b.ply]
      - type: sink.las
        path: out/all.las
        merge: true
      - type: sink.ply
        path: out/all.ply
        merge: true
"""


@pytest.fixture
def merge_inputs(tmp_path):
    make_las(tmp_path / "a.las", LAS_XYZ, scale=0.001, point_format=1, intensity=np.array([100, 200, 300]),
             gps_time=np.array([0.5, 1.5, 2.5]), classification=np.array([2, 3, 4]))
    (tmp_path / "b.ply").write_text(PLY_TEXT)
    return tmp_path


def test_merge_writes_every_item_into_one_file(merge_inputs, registry):
    tmp_path = merge_inputs
    results = run(tmp_path, registry, MERGE_CONFIG)
    assert [r.points_out for r in results] == [3, 2]
    assert [r.outputs for r in results] == [[], []]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["all.las", "all.ply"]
    written = laspy.read(tmp_path / "out/all.las")
    assert written.point_format.id == 3  # format 1 (gps time) + colour from the PLY
    assert written.header.point_count == len(written.points) == 5
    expected = np.concatenate([LAS_XYZ, PLY_XYZ])
    for index, axis in enumerate("xyz"):
        assert np.abs(las_values(written, axis) - expected[:, index]).max() <= 0.0005, axis
    assert written.intensity.tolist() == [100, 200, 300, 0, 0]
    assert written.gps_time.tolist() == [0.5, 1.5, 2.5, 0.0, 0.0]
    assert np.asarray(written.classification).tolist() == [2, 3, 4, 0, 0]
    assert written.red.tolist() == [0, 0, 0, 255, 1]
    assert written.green.tolist() == [0, 0, 0, 128, 2]
    assert written.blue.tolist() == [0, 0, 0, 0, 3]
    ply = read_plain_ply(tmp_path / "out/all.ply")
    assert len(ply) == 5
    for index, axis in enumerate("xyz"):
        assert ply[axis].tolist() == expected[:, index].tolist(), axis
    assert ply["intensity"].tolist() == [100, 200, 300, 0, 0]
    assert ply["red"].tolist() == [0, 0, 0, 255, 1]
    assert ply["gps_time"].tolist() == [0.5, 1.5, 2.5, 0.0, 0.0]


def test_merge_offsets_come_from_the_union_of_bounds(merge_inputs, registry):
    tmp_path = merge_inputs
    run(tmp_path, registry, MERGE_CONFIG)
    written = laspy.read(tmp_path / "out/all.las")
    union_mins = np.concatenate([LAS_XYZ, PLY_XYZ]).min(axis=0)
    assert written.header.offsets.tolist() == np.floor(union_mins).tolist() == [500.0, 1500.0, 5.0]
    assert written.header.mins.tolist() == union_mins.tolist()


def test_merge_with_two_jobs_gives_the_same_files(merge_inputs, registry):
    tmp_path = merge_inputs
    run(tmp_path, registry, MERGE_CONFIG)
    first = {name: (tmp_path / "out" / name).read_bytes() for name in ("all.las", "all.ply")}
    results = run(tmp_path, registry, MERGE_CONFIG, jobs=2)
    assert [r.points_out for r in results] == [3, 2]
    assert {name: (tmp_path / "out" / name).read_bytes() for name in ("all.las", "all.ply")} == first
    assert len(laspy.read(tmp_path / "out/all.las").points) == 5


def test_merge_with_a_path_that_differs_per_item_is_an_error(merge_inputs, registry):
    tmp_path = merge_inputs
    cfg = config.load(write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [a.las, b.ply]
          - type: sink.las
            path: out/{name}.las
            merge: true
    """), registry)
    with pytest.raises(PipelineError) as error:
        Runner(cfg, registry).plan()
    assert str(error.value) == (
        f"stages[1] (sink.las): merge: true needs one file for all items, but the path template gives 2 "
        f"({tmp_path / 'out/a.las'}, {tmp_path / 'out/b.las'}, ...); use fields every item shares")
    assert not (tmp_path / "out").exists()


def test_dry_run_lists_the_merged_output(merge_inputs):
    tmp_path = merge_inputs
    path = write_config(tmp_path, MERGE_CONFIG)
    done = cli("run", "--dry-run", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "2 item(s)",
        f"[0] a (id a, 3 points) from {tmp_path / 'a.las'}",
        f"[1] b (id b, 2 points) from {tmp_path / 'b.ply'}",
        f"all items -> {tmp_path / 'out/all.las'}  (stages[1] (sink.las), merged)",
        f"all items -> {tmp_path / 'out/all.ply'}  (stages[2] (sink.ply), merged)",
    ]
    assert not (tmp_path / "out").exists()


def test_report_lists_merged_outputs_with_size_and_sha256(merge_inputs):
    tmp_path = merge_inputs
    path = write_config(tmp_path, MERGE_CONFIG)
    done = cli("run", "-q", "--jobs", "2", "--report", tmp_path / "report.json", path, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    expected = []
    for label, name in (("stages[1] (sink.las)", "all.las"), ("stages[2] (sink.ply)", "all.ply")):
        data = (tmp_path / "out" / name).read_bytes()
        crs = {"crs": None} if name.endswith(".las") else {}  # the inputs declare none
        expected.append({"sink": label, "path": str(tmp_path / "out" / name), **crs, "size": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()})
    assert report["merged_outputs"] == expected
    assert report["totals"]["outputs"] == 2
    assert report["totals"]["bytes_written"] == sum(e["size"] for e in expected)
    assert [(i["name"], i["points_out"], i["outputs"]) for i in report["items"]] == [("a", 3, []), ("b", 2, [])]


# --- sink.ply: offset and colours --------------------------------------------------------------------------

SURVEY_XYZ = np.array([[350000.123, 4000000.456, 10.789], [350010.5, 4000005.25, 12.0],
                       [350003.001, 4000001.999, 11.5]])


def header_lines(path):
    data = path.read_bytes()
    return data[:data.index(b"end_header")].decode("ascii").splitlines()


def test_ply_offset_auto_writes_float_and_a_comment(tmp_path, registry):
    make_las(tmp_path / "survey.las", SURVEY_XYZ, scale=0.001, point_format=0)
    original = laspy.read(tmp_path / "survey.las")
    out = ply_run(tmp_path, registry, "survey.las", {"offset": "auto"})
    lines = header_lines(out)
    assert "comment offset 350000.0 4000000.0 10.0" in lines
    assert [l for l in lines if l.startswith("property") and l.split()[-1] in "xyz"] == [
        "property float x", "property float y", "property float z"]
    plain = read_plain_ply(out)
    offset = [float(w) for w in next(l for l in lines if l.startswith("comment offset")).split()[2:]]
    for axis, shift in zip("xyz", offset):
        values = las_values(original, axis)
        assert plain[axis].dtype == np.float32
        assert np.array_equal(plain[axis], (values - shift).astype(np.float32)), axis
        assert np.abs(plain[axis].astype(np.float64) + shift - values).max() < 1e-5, axis


def test_ply_without_offset_writes_double_and_no_comment(tmp_path, registry):
    make_las(tmp_path / "survey.las", SURVEY_XYZ, scale=0.001, point_format=0)
    out = ply_run(tmp_path, registry, "survey.las", {})
    assert not any(l.startswith("comment offset") for l in header_lines(out))
    plain = read_plain_ply(out)
    assert plain["x"].dtype == np.float64
    assert np.array_equal(plain["x"], las_values(laspy.read(tmp_path / "survey.las"), "x"))


def colour_las(path, red, green, blue):
    return make_las(path, SURVEY_XYZ[:len(red)], point_format=2, red=np.array(red), green=np.array(green),
                    blue=np.array(blue))


def test_colors_auto_copies_8_bit_values_in_16_bit_fields(tmp_path, registry):
    colour_las(tmp_path / "c8.las", [255, 0, 17], [128, 7, 0], [1, 200, 255])
    out = ply_run(tmp_path, registry, "c8.las", {"colors": "auto"})
    plain = read_plain_ply(out)
    assert [plain.dtype[c] for c in ("red", "green", "blue")] == [np.dtype("u1")] * 3
    assert plain["red"].tolist() == [255, 0, 17]
    assert plain["green"].tolist() == [128, 7, 0]
    assert plain["blue"].tolist() == [1, 200, 255]
    cloud = open3d.io.read_point_cloud(str(out))
    assert np.array_equal(np.asarray(cloud.colors),
                          np.stack([plain["red"], plain["green"], plain["blue"]], axis=1) / 255.0)


def test_colors_auto_divides_16_bit_values_by_257(tmp_path, registry):
    colour_las(tmp_path / "c16.las", [65535, 257, 0], [32896, 0, 514], [514, 65535, 256])
    out = ply_run(tmp_path, registry, "c16.las", {})
    plain = read_plain_ply(out)
    assert [plain.dtype[c] for c in ("red", "green", "blue")] == [np.dtype("u1")] * 3
    assert plain["red"].tolist() == [255, 1, 0]
    assert plain["green"].tolist() == [128, 0, 2]
    assert plain["blue"].tolist() == [2, 255, 1]
    cloud = open3d.io.read_point_cloud(str(out))
    assert np.asarray(cloud.colors)[0].tolist() == [1.0, 128 / 255, 2 / 255]


def test_colors_auto_looks_at_every_channel(tmp_path, registry):
    # pure 16-bit blue: red and green alone look 8-bit
    colour_las(tmp_path / "blue.las", [0, 0], [0, 0], [65535, 32896])
    out = ply_run(tmp_path, registry, "blue.las", {"colors": "auto"})
    plain = read_plain_ply(out)
    assert plain["blue"].tolist() == [255, 128]
    assert plain["red"].tolist() == [0, 0]


def test_colors_8bit_with_a_value_over_255_is_an_error(tmp_path, registry):
    colour_las(tmp_path / "c16.las", [65535, 257], [0, 0], [0, 0])
    with pytest.raises(SinkError) as error:
        ply_run(tmp_path, registry, "c16.las", {"colors": "8bit"})
    assert str(error.value) == "stages[1] (sink.ply): c16: red value 65535 does not fit 8 bits"
    assert not (tmp_path / "out/c16.ply").exists()


def test_colors_16bit_divides_even_small_values(tmp_path, registry):
    colour_las(tmp_path / "c.las", [255, 65535], [128, 0], [129, 257])
    plain = read_plain_ply(ply_run(tmp_path, registry, "c.las", {"colors": "16bit"}))
    assert plain["red"].tolist() == [1, 255]
    assert plain["green"].tolist() == [0, 0]
    assert plain["blue"].tolist() == [1, 1]


def test_16_bit_colours_become_the_nearest_8_bit_value_for_every_input():
    every = np.arange(65536, dtype=np.uint16)
    depth = ColourDepth("16bit", "sink.ply: c")
    depth.decided = "16bit"
    converted = depth.convert("red", every)
    assert converted.dtype == np.uint8
    assert converted.tolist() == np.round(every / 257).astype(np.uint8).tolist()
    assert converted[[128, 129, 385, 386, 65535]].tolist() == [0, 1, 1, 2, 255]


def test_16_bit_colours_that_do_not_fit_16_bits_are_an_error():
    depth = ColourDepth("16bit", "sink.ply: c")
    depth.decided = "16bit"
    with pytest.raises(SinkError) as error:
        depth.convert("green", np.array([5, 70000], dtype=np.int32))
    assert str(error.value) == "sink.ply: c: green value 70000 does not fit 16 bits"
    with pytest.raises(SinkError) as error:
        depth.convert("blue", np.array([-1, 5], dtype=np.int32))
    assert str(error.value) == "sink.ply: c: blue value -1 does not fit 16 bits"


def test_colors_keep_writes_ushort(tmp_path, registry):
    colour_las(tmp_path / "c16.las", [65535, 257], [32896, 0], [3, 65534])
    out = ply_run(tmp_path, registry, "c16.las", {"colors": "keep"})
    assert [l for l in header_lines(out) if l.split()[-1] in ("red", "green", "blue")] == [
        "property ushort red", "property ushort green", "property ushort blue"]
    plain = read_plain_ply(out)
    assert plain["red"].tolist() == [65535, 257]
    assert plain["green"].tolist() == [32896, 0]
    assert plain["blue"].tolist() == [3, 65534]


def test_colors_of_an_ascii_ply(tmp_path, registry):
    colour_las(tmp_path / "c16.las", [65535, 257], [32896, 0], [3, 65534])
    out = ply_run(tmp_path, registry, "c16.las", {"ascii": "true"})
    plain = read_plain_ply(out)
    assert plain["red"].tolist() == [255, 1] and plain["blue"].tolist() == [0, 255]
