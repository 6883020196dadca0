"""E57 through pye57: every scan of a file, poses applied, intensity scaled to 0..65535 by the file's limits."""
import importlib

import laspy
import numpy as np
import pye57
import pytest

from pipeline.errors import MissingDependency
from stages.files import read_file
from tests.plyfile_plain import read_plain_ply
from tests.conftest import as_array, run


def expected_scans(path):
    """Per scan, what pye57 itself gives: posed x/y/z, colours, and intensity scaled by the scan's limits."""
    e57 = pye57.E57(str(path))
    scans = []
    for index in range(e57.scan_count):
        xyz = e57.read_scan(index, transform=True, ignore_missing_fields=True)
        full = e57.read_scan(index, intensity=True, colors=True, transform=True, ignore_missing_fields=True)
        limits = e57.get_header(index).node["intensityLimits"]
        low, high = float(limits["intensityMinimum"].value()), float(limits["intensityMaximum"].value())
        raw = full["intensity"].astype(np.float64)
        scaled = np.zeros(len(raw)) if high <= low else np.round(np.clip((raw - low) / (high - low), 0, 1) * 65535)
        scans.append({"x": xyz["cartesianX"], "y": xyz["cartesianY"], "z": xyz["cartesianZ"],
                      "intensity": scaled, "red": full["colorRed"], "green": full["colorGreen"],
                      "blue": full["colorBlue"]})
    return scans


def joined(scans, name):
    return np.concatenate([scan[name] for scan in scans])


def read_all(path, chunk_size=1000):
    with read_file(str(path), chunk_size) as stream:
        chunks = list(stream.chunks)
        info = stream.info
    return info, chunks, as_array(chunks)


@pytest.mark.parametrize("name, scan_counts", [("e57/A4.e57", [4]), ("e57/A_B.e57", [2, 4])])
def test_scans_are_read_with_pye57_values(conformance, name, scan_counts):
    path = conformance / name
    scans = expected_scans(path)
    assert [len(scan["x"]) for scan in scans] == scan_counts
    info, _, points = read_all(path)
    assert info.source_format == "e57"
    assert info.point_count == sum(scan_counts)
    assert info.format_facts["e57"]["scans"] == len(scan_counts)
    assert points.dtype == np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2"),
                                     ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    assert len(points) == sum(scan_counts)
    for field in ("x", "y", "z", "red", "green", "blue", "intensity"):
        assert points[field].tolist() == joined(scans, field).tolist(), field


def test_intensity_uses_each_scans_limits(conformance):
    # A_B.e57: scan 0 has limits 0..0.873046875, scan 1 has limits 0..257.896...
    _, _, points = read_all(conformance / "e57/A_B.e57")
    e57 = pye57.E57(str(conformance / "e57/A_B.e57"))
    high = [float(e57.get_header(i).node["intensityLimits"]["intensityMaximum"].value()) for i in range(2)]
    assert high[0] == 0.873046875
    raw = [e57.read_scan(i, intensity=True, ignore_missing_fields=True)["intensity"].astype(float) for i in range(2)]
    assert points["intensity"][:2].tolist() == [0, 65535]  # 0 and the maximum of scan 0
    assert points["intensity"][-1] == 65535  # the maximum of scan 1
    assert points["intensity"][2:].tolist() == np.round(raw[1] / high[1] * 65535).tolist()


def test_chunks_follow_scans_split_by_chunk_size(conformance):
    _, chunks, points = read_all(conformance / "e57/A_B.e57", chunk_size=3)
    assert [len(c) for c in chunks] == [2, 3, 1]
    _, chunks, _ = read_all(conformance / "e57/A_B.e57", chunk_size=1)
    assert [len(c) for c in chunks] == [1] * 6
    _, chunks, _ = read_all(conformance / "e57/A4.e57", chunk_size=3)
    assert [len(c) for c in chunks] == [3, 1]


def test_e57_to_las_and_ply(tmp_path, registry, conformance):
    path = conformance / "e57/A_B.e57"
    results = run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{path}"]
          - type: sink.las
            path: out/{{name}}.las
          - type: sink.ply
            path: out/{{name}}.ply
    """)
    scans = expected_scans(path)
    assert results[0].points_in == results[0].points_out == 6
    las = laspy.read(tmp_path / "out/A_B.las")
    assert str(las.header.version) == "1.4" and las.point_format.id == 2
    assert las.header.scales.tolist() == [0.001] * 3
    assert len(las.points) == 6
    for axis in "xyz":
        assert np.abs(np.asarray(las[axis]) - joined(scans, axis)).max() <= 0.0005, axis
    for field in ("intensity", "red", "green", "blue"):
        assert np.asarray(las[field]).tolist() == joined(scans, field).tolist(), field
    ply = read_plain_ply(tmp_path / "out/A_B.ply")
    assert ply.dtype == np.dtype([("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("intensity", "<u2"),
                                  ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for field in ("x", "y", "z", "intensity", "red", "green", "blue"):
        assert ply[field].tolist() == joined(scans, field).tolist(), field


def test_missing_pye57_is_a_one_line_error(tmp_path, registry, conformance, monkeypatch):
    import pipeline.imports

    real_import = importlib.import_module

    def failing_import(name, *args, **kwargs):
        if name == "pye57":
            raise ImportError("No module named 'pye57'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(pipeline.imports.importlib, "import_module", failing_import)
    with pytest.raises(MissingDependency) as error:
        run(tmp_path, registry, f"""
            version: 1
            stages:
              - type: source.files
                paths: ["{conformance / 'e57/A4.e57'}"]
              - type: sink.las
                path: out/{{name}}.las
        """)
    assert str(error.value) == ("cannot import pye57 (needed for E57 files): No module named 'pye57'; "
                                "install it with: pip install pye57")
    assert not (tmp_path / "out").exists()


def test_grid_indexes_are_kept_and_the_pose_applied(tmp_path, registry):
    import pye57

    from tests.plyfile_plain import read_plain_ply
    from tests.conftest import run

    writer = pye57.E57(str(tmp_path / "grid.e57"), mode="w")
    points = {"cartesianX": np.arange(5, dtype=float), "cartesianY": np.zeros(5), "cartesianZ": np.ones(5),
              "rowIndex": np.arange(5, dtype=np.int32), "columnIndex": np.arange(5, dtype=np.int32) * 2}
    writer.write_scan_raw(points, name="scan", rotation=np.array([1.0, 0, 0, 0]), translation=np.array([10.0, 0, 0]))
    writer.close()
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [grid.e57]
          - type: sink.ply
            path: out/{name}.ply
    """)
    ply = read_plain_ply(tmp_path / "out/grid.ply")
    assert ply["x"].tolist() == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert ply["row_index"].tolist() == [0, 1, 2, 3, 4] and ply["column_index"].tolist() == [0, 2, 4, 6, 8]
    assert ply.dtype["row_index"] == np.dtype("<i4")
