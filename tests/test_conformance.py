"""Every file of the shared conformance corpus is read and written back without loss."""
import logging
import subprocess
import sys

import laspy
import numpy as np
import open3d
import pytest

from pipeline.errors import PipelineError
from tests.conftest import CONFORMANCE, run, vlr_keys, write_config
from tests.plyfile_plain import read_plain_ply

TRUNCATED = "las/1.2-no-points.las"  # its header claims 1065 points, and it holds none
LAS_FILES = [p for p in sorted(p.relative_to(CONFORMANCE).as_posix() for p in CONFORMANCE.glob("la[sz]/*.la[sz]"))
             if p != TRUNCATED]
PLY_FILES = [p for p in sorted(p.relative_to(CONFORMANCE).as_posix() for p in CONFORMANCE.glob("ply/*.ply"))
             if p != "ply/no_vertex.ply"]


def convert(tmp_path, registry, source, outputs, extra=""):
    sinks = "".join(f"  - type: {kind}\n    path: out/{{name}}{suffix}\n" for kind, suffix in outputs)
    body = f"version: 1\nstages:\n  - type: source.files\n    paths: [{source}]\n{extra}{sinks}"
    return run(tmp_path, registry, body)


@pytest.mark.parametrize("name", LAS_FILES)
def test_las_rewrites_are_lossless(tmp_path, registry, conformance, name):
    source = conformance / name
    convert(tmp_path, registry, source, [("sink.las", ".las"), ("sink.las", ".laz"), ("sink.ply", ".ply")])
    original = laspy.read(source)
    stem = source.stem
    for suffix in (".las", ".laz"):
        written = laspy.read(tmp_path / "out" / f"{stem}{suffix}")
        assert written.header.point_count == len(original.points)
        assert written.point_format.id == original.point_format.id
        assert np.array_equal(written.header.scales, original.header.scales)
        assert np.array_equal(written.header.offsets, original.header.offsets)
        # the very same point records, NaN gps times included
        assert written.points.array.tobytes() == original.points.array.tobytes()
        assert vlr_keys(written.header) == vlr_keys(original.header)
        assert list(written.point_format.extra_dimension_names) == list(original.point_format.extra_dimension_names)
        if len(original.points):
            assert np.array_equal(written.header.mins, [written.x.min(), written.y.min(), written.z.min()])
            assert np.array_equal(written.header.maxs, [written.x.max(), written.y.max(), written.z.max()])
    plain = read_plain_ply(tmp_path / "out" / f"{stem}.ply")
    assert len(plain) == len(original.points)
    for axis in "xyz":
        assert np.array_equal(plain[axis], np.asarray(original[axis]))
    for name in original.point_format.dimension_names:
        if name in "XYZ":
            continue
        values = np.asarray(original[name])
        columns = [name] if values.ndim == 1 else [f"{name}_{i}" for i in range(values.shape[1])]
        stacked = np.stack([plain[c] for c in columns], axis=-1).reshape(values.shape)
        assert np.array_equal(stacked, values, equal_nan=True), name


@pytest.mark.parametrize("name", PLY_FILES)
def test_ply_rewrites_are_lossless(tmp_path, registry, conformance, name, caplog):
    source = conformance / name
    convert(tmp_path, registry, source, [("sink.las", ".las"), ("sink.ply", ".ply")])
    stem = source.stem
    original = read_plain_ply(source)
    written_ply = read_plain_ply(tmp_path / "out" / f"{stem}.ply")
    written_las = laspy.read(tmp_path / "out" / f"{stem}.las")
    assert len(written_ply) == len(written_las.points) == len(original)
    for field in original.dtype.names:
        assert np.array_equal(written_ply[field], original[field].astype(written_ply[field].dtype)), field
        if field in "xyz":
            assert np.abs(np.asarray(written_las[field]) - original[field]).max() <= 0.0005
        else:
            assert np.array_equal(np.asarray(written_las[field]), original[field]), field
    if "z" not in original.dtype.names:
        assert written_ply["z"].tolist() == [0.0] * len(original)
        assert "PLY vertices have no z property; z is set to 0" in caplog.text


def test_open3d_reads_our_ply(tmp_path, registry, conformance):
    convert(tmp_path, registry, conformance / "las/1.2-with-color.las", [("sink.ply", ".ply")])
    cloud = open3d.io.read_point_cloud(str(tmp_path / "out/1.2-with-color.ply"))
    original = laspy.read(conformance / "las/1.2-with-color.las")
    assert np.array_equal(np.asarray(cloud.points), np.stack([original.x, original.y, original.z], axis=1))


def test_a_file_without_vertices_is_refused(tmp_path, registry, conformance):
    with pytest.raises(PipelineError) as error:
        convert(tmp_path, registry, conformance / "ply/no_vertex.ply", [("sink.ply", ".ply")])
    assert str(error.value) == f"{conformance / 'ply/no_vertex.ply'}: PLY file has no vertex element"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, warnings, points", [
    ("bad/bad_vlr_count.las",
     ["header claims 3 VLRs but only 2 fit before the point data at byte 429; reading 2"], 10),
    ("bad/garbage_nVariableLength.las",
     ["header claims 1069128089 VLRs but only 0 fit before the point data at byte 227; reading 0",
      "header claims 719 points but the file holds 718; reading 718"], 718),
    ("las/1.2-no-points.las", ["header claims 1065 points but the file holds 0; reading 0"], 0),
])
def test_broken_headers_are_read_with_a_warning(tmp_path, registry, conformance, caplog, name, warnings, points):
    """With `truncated: read`: a file that holds fewer points than its header claims is otherwise an error."""
    with caplog.at_level(logging.WARNING):
        results = convert(tmp_path, registry, conformance / name, [("sink.las", ".las"), ("sink.ply", ".ply")],
                          extra="    truncated: read\n")
    assert [r.getMessage() for r in caplog.records] == [f"{conformance / name}: {w}" for w in warnings]
    assert results[0].points_out == points
    written = laspy.read(tmp_path / "out" / f"{(conformance / name).stem}.las")
    assert len(written.points) == points
    assert written.header.point_count == points


@pytest.mark.parametrize("truncated", ["error", "read"])
def test_the_hanging_file_does_not_hang_the_cli(tmp_path, conformance, truncated):
    source = conformance / "bad/garbage_nVariableLength.las"
    config_path = write_config(tmp_path, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{source}"]
            truncated: {truncated}
          - type: sink.las
            path: out/{{name}}.laz
    """)
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "-q", str(config_path)],
                          capture_output=True, text=True, timeout=60)
    if truncated == "error":
        assert (done.returncode, done.stderr) == (1, f"error: {source}: header claims 719 points but the file holds "
                                                     "718 (`truncated: read` reads what is there)\n")
        assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
        return
    assert done.returncode == 0
    assert "Traceback" not in done.stderr
    assert len(laspy.read(tmp_path / "out/garbage_nVariableLength.laz").points) == 718


def test_a_file_holding_fewer_points_than_its_header_claims_is_an_error(tmp_path, registry, conformance):
    with pytest.raises(PipelineError) as error:
        convert(tmp_path, registry, conformance / TRUNCATED, [("sink.las", ".las")])
    assert str(error.value) == (f"{conformance / TRUNCATED}: header claims 1065 points but the file holds 0 "
                                "(`truncated: read` reads what is there)")


def test_empty_clouds_give_valid_empty_files(tmp_path, registry, conformance):
    convert(tmp_path, registry, conformance / "las/no-points.las", [("sink.las", ".laz"), ("sink.ply", ".ply")])
    assert len(laspy.read(tmp_path / "out/no-points.laz").points) == 0
    assert len(read_plain_ply(tmp_path / "out/no-points.ply")) == 0
    assert len(open3d.io.read_point_cloud(str(tmp_path / "out/no-points.ply")).points) == 0
