"""Every PTS, XYZ and E57 file of the shared corpus is written as LAS and PLY without loss."""
import laspy
import numpy as np
import pye57
import pytest

from tests.conftest import CONFORMANCE, run
from tests.plyfile_plain import read_plain_ply

TEXT_FILES = sorted(p.relative_to(CONFORMANCE).as_posix()
                    for p in [*CONFORMANCE.glob("pts/*.pts"), *CONFORMANCE.glob("xyz/*.xyz")])
E57_FILES = sorted(p.relative_to(CONFORMANCE).as_posix() for p in CONFORMANCE.glob("e57/*.e57"))


def convert(tmp_path, registry, source, outputs):
    sinks = "".join(f"  - type: {kind}\n    path: out/{{name}}{suffix}\n" for kind, suffix in outputs)
    body = f"version: 1\nstages:\n  - type: source.files\n    paths: [\"{source}\"]\n{sinks}"
    return run(tmp_path, registry, body)


def test_the_corpus_has_the_files_this_module_covers():
    assert {"pts/autzen.pts", "pts/bunny_8.pts", "pts/test.pts", "xyz/data.xyz"} <= set(TEXT_FILES)
    assert {"e57/A4.e57", "e57/A_B.e57"} <= set(E57_FILES)


def expected_text(path):
    """x, y, z and attributes parsed here: PTS is count, then x y z [intensity r g b], intensity shifted by 2048."""
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if path.suffix == ".pts":
        lines = lines[1:]
    table = np.array([[float(w) for w in words] for words in lines])
    expected = {"x": table[:, 0], "y": table[:, 1], "z": table[:, 2]}
    if table.shape[1] == 7:
        expected.update(intensity=table[:, 3] + 2048, red=table[:, 4], green=table[:, 5], blue=table[:, 6])
    return expected


def expected_e57(path):
    e57 = pye57.E57(str(path))
    parts = []
    for index in range(e57.scan_count):
        data = e57.read_scan(index, intensity=True, colors=True, transform=True, ignore_missing_fields=True)
        limits = e57.get_header(index).node["intensityLimits"]
        low, high = float(limits["intensityMinimum"].value()), float(limits["intensityMaximum"].value())
        raw = data["intensity"].astype(np.float64)
        intensity = np.zeros(len(raw)) if high <= low else np.round(np.clip((raw - low) / (high - low), 0, 1) * 65535)
        parts.append({"x": data["cartesianX"], "y": data["cartesianY"], "z": data["cartesianZ"],
                      "intensity": intensity, "red": data["colorRed"], "green": data["colorGreen"],
                      "blue": data["colorBlue"]})
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def check_outputs(tmp_path, stem, expected):
    count = len(expected["x"])
    written_las = laspy.read(tmp_path / "out" / f"{stem}.las")
    written_ply = read_plain_ply(tmp_path / "out" / f"{stem}.ply")
    assert written_las.header.point_count == len(written_las.points) == count
    assert len(written_ply) == count
    assert written_las.header.scales.tolist() == [0.001] * 3
    assert written_las.point_format.id == (2 if "red" in expected else 0)
    for axis in "xyz":
        assert np.abs(np.asarray(written_las[axis]) - expected[axis]).max() <= 0.0005, axis
        assert written_ply[axis].dtype == np.float64
        assert written_ply[axis].tolist() == expected[axis].tolist(), axis
    attributes = [name for name in expected if name not in "xyz"]
    assert list(written_ply.dtype.names) == ["x", "y", "z", *attributes]
    for name in attributes:
        assert np.asarray(written_las[name]).tolist() == expected[name].tolist(), name
        assert written_ply[name].tolist() == expected[name].tolist(), name
    for name in written_las.point_format.dimension_names:  # what the input does not have is zero
        if name not in ("X", "Y", "Z", *attributes):
            assert not np.asarray(written_las[name]).any(), name


@pytest.mark.parametrize("name", TEXT_FILES)
def test_text_files_to_las_and_ply(tmp_path, registry, conformance, name):
    source = conformance / name
    results = convert(tmp_path, registry, source, [("sink.las", ".las"), ("sink.ply", ".ply")])
    expected = expected_text(source)
    assert results[0].points_in == results[0].points_out == len(expected["x"])
    check_outputs(tmp_path, source.stem, expected)


@pytest.mark.parametrize("name", E57_FILES)
def test_e57_files_to_las_and_ply(tmp_path, registry, conformance, name):
    source = conformance / name
    results = convert(tmp_path, registry, source, [("sink.las", ".las"), ("sink.ply", ".ply")])
    expected = expected_e57(source)
    assert results[0].points_in == results[0].points_out == len(expected["x"])
    check_outputs(tmp_path, source.stem, expected)
