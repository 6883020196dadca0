"""The bytes every sink writes, pinned: the hashes in tests/data/golden_outputs.json were recorded from the
engine before the one-data-path rebuild (issue "One data path"), which kept every output byte-identical, and
recorded again when LAS 1.4 outputs in formats 0-5 got their legacy counts (issue "Coordinate systems and
header fidelity"): the whole conformance corpus, the demo and random survey data, into LAS, LAZ and PLY,
with and without --jobs.

LAZ files are compared by their header and VLR bytes and their decompressed point records, so that a
new lazrs release that packs the same points differently does not count as a change.
Record again (only when a change of output is intended): `RECORD_GOLDEN=1 python -m pytest tests/test_golden.py`.
"""
import hashlib
import json
import os
import shutil
from pathlib import Path

import laspy
import numpy as np
import pytest

from tests.conftest import CONFORMANCE, REPO, cli, make_las, run, write_config

GOLDEN = Path(__file__).parent / "data" / "golden_outputs.json"
RECORDING = os.environ.get("RECORD_GOLDEN") == "1"
MOVE = "[[0.8660254037844387, -0.5, 0, 350000.125], [0.5, 0.8660254037844387, 0, 4000000.5], [0, 0, 1, 12], [0, 0, 0, 1]]"
CORPUS = sorted(p.relative_to(CONFORMANCE).as_posix() for folder in ("las", "laz", "ply", "pts", "xyz")
                for p in (CONFORMANCE / folder).iterdir()
                if p.name not in ("no_vertex.ply", "1.2-no-points.las"))  # refused: no vertex; 1065 points claimed, none held


def digest(path):
    """The sha256 of a written file (of a LAZ file: its header and VLRs and its decompressed points)."""
    path = Path(path)
    if path.suffix != ".laz":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    data = laspy.read(path)
    head = path.read_bytes()[:data.header.offset_to_point_data]
    return hashlib.sha256(head + data.points.array.tobytes()).hexdigest()


def outputs(folder):
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def golden():
    if RECORDING:
        recorded = {}
        yield recorded
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    yield json.loads(GOLDEN.read_text())


def check(golden, case, folder):
    found = outputs(folder)
    assert found, f"{case}: nothing was written"
    if RECORDING:
        assert golden.setdefault(case, found) == found, f"{case}: outputs differ between runs"
    else:
        assert found == golden[case], f"{case}: outputs differ from the recorded ones"


def every_sink(extra=""):
    return f"""{extra}
          - type: sink.las
            path: out/{{name}}.las
          - type: sink.las
            path: out/{{name}}.laz
          - type: sink.ply
            path: out/{{name}}.ply
    """


@pytest.mark.parametrize("name", CORPUS)
@pytest.mark.parametrize("moved", [False, True], ids=["as-is", "moved"])
def test_corpus_outputs_are_unchanged(tmp_path, registry, conformance, golden, name, moved):
    transform = f"""
          - type: transform.matrix
            matrix: {MOVE}""" if moved else ""
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / name}"]""" + every_sink(transform))
    check(golden, f"{name} {'moved' if moved else 'as-is'}", tmp_path / "out")


def run_cli(config, jobs):
    """`pipeline run` in a process of its own: worker processes are forked from it before it has used
    lazrs (a process forked after lazrs ran its thread pool hangs in it; see the note in runner.py)."""
    done = cli("run", "-q", "--jobs", jobs, config)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("jobs", [1, 2])
def test_demo_outputs_are_unchanged(tmp_path, golden, jobs):
    shutil.copytree(REPO / "sample_configs", tmp_path / "sample_configs", ignore=shutil.ignore_patterns("out"))
    run_cli(tmp_path / "sample_configs" / "demo.yaml", jobs)
    check(golden, "demo", tmp_path / "out")


def survey_data(folder):
    """Random survey data at UTM-sized coordinates: LAS 1.4 point format 7, binary and ascii PLY, XYZ text."""
    rng = np.random.default_rng(2026)
    count = 50_000
    xyz = np.column_stack([rng.uniform(350_000, 350_400, count), rng.uniform(4_000_000, 4_000_300, count),
                           rng.uniform(10, 60, count)])
    colours = {c: rng.integers(0, 65536, count, dtype=np.uint16) for c in ("red", "green", "blue")}
    make_las(folder / "survey.las", xyz, point_format=7, version="1.4", intensity=rng.integers(0, 65536, count),
             classification=rng.integers(0, 32, count), gps_time=rng.uniform(0, 1e6, count),
             return_number=rng.integers(1, 4, count), **colours)
    vertices = np.zeros(count, [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"), ("green", "u1"),
                                ("blue", "u1"), ("scalar_Intensity", "<f4")])
    for axis, values in zip("xyz", xyz.T):
        vertices[axis] = values
    for colour in ("red", "green", "blue"):
        vertices[colour] = colours[colour] >> 8
    vertices["scalar_Intensity"] = rng.uniform(0, 1, count).astype(np.float32)
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {count}\nproperty double x\nproperty double y\n"
              "property double z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
              "property float scalar_Intensity\nend_header\n")
    (folder / "binary.ply").write_bytes(header.encode() + vertices.tobytes())
    rows = [f"{x:.3f} {y:.3f} {z:.3f} {r} {g} {b}" for x, y, z, r, g, b in
            zip(*xyz[:5000].T, *(vertices[c][:5000] for c in ("red", "green", "blue")))]
    (folder / "ascii.ply").write_text(header.replace("binary_little_endian", "ascii").replace(
        f"vertex {count}", "vertex 5000").replace("property float scalar_Intensity\n", "") + "\n".join(rows) + "\n")
    (folder / "text.xyz").write_text("X Y Z R G B\n" + "\n".join(rows) + "\n")
    (folder / "leica.pts").write_text("5000\n" + "\n".join(
        f"{x} {y} {z} {i} {r} {g} {b}" for (x, y, z, r, g, b), i in
        zip((row.split() for row in rows), rng.integers(-2048, 2048, 5000))) + "\n")


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("moved", [False, True], ids=["as-is", "moved"])
def test_survey_outputs_are_unchanged(tmp_path, golden, jobs, moved):
    survey_data(tmp_path)
    transform = f"""
          - type: transform.matrix
            matrix: {MOVE}""" if moved else ""
    config = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [survey.las, binary.ply, ascii.ply, text.xyz, leica.pts]
            chunk_size: 7000""" + every_sink(transform))
    run_cli(config, jobs)
    check(golden, f"survey {'moved' if moved else 'as-is'}", tmp_path / "out")


@pytest.mark.parametrize("options", [
    {"ascii": "true"}, {"offset": "auto"}, {"colors": "16bit"}, {"colors": "keep"},
])
def test_ply_options_outputs_are_unchanged(tmp_path, registry, golden, options):
    make_las(tmp_path / "colour.las", np.random.default_rng(7).uniform(500_000, 500_100, (3000, 3)),
             red=np.arange(3000) * 20, green=np.arange(3000) % 256, blue=np.full(3000, 65535))
    lines = "".join(f"\n            {key}: {value}" for key, value in options.items())
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [colour.las]
          - type: sink.ply
            path: out/{{name}}.ply{lines}
    """)
    check(golden, f"ply {options}", tmp_path / "out")


def test_merged_outputs_are_unchanged(tmp_path, registry, golden):
    survey_data(tmp_path)
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [survey.las, binary.ply, text.xyz]
          - type: sink.las
            path: out/all.laz
            merge: true
          - type: sink.ply
            path: out/all.ply
            merge: true
    """)
    check(golden, "merged", tmp_path / "out")
