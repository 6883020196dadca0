"""The command line end to end: exit codes, messages, the demo, reports, dry runs."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np
import open3d
import pytest

from pipeline.cli import main
from pipeline.registry import Registry
from tests.conftest import cli, make_las, write_config
from tests.plyfile_plain import read_plain_ply

def demo_world_matrices(folder):
    """Each demo sub's world matrix, group.tm · sub.tm, from the listing beside the demo data (row-major)."""
    items = json.loads((folder / "data/capture.json").read_text())["result"]["data"]
    tm = {i["attributes"]["name"]: np.array(i["attributes"]["meta"]["prop"]["tm"]).reshape(4, 4) for i in items}
    return {name: tm["cluster 1"] @ matrix for name, matrix in tm.items() if name != "cluster 1"}


def moved(matrix, x, y, z):
    points = np.stack([x, y, z], axis=1) @ matrix[:3, :3].T + matrix[:3, 3]
    return points.T


def test_demo_runs_and_outputs_read_back(demo_copy):
    report = demo_copy.parent / "run.json"
    done = cli("run", demo_copy / "demo.yaml", "--report", report)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1].startswith("done: 3 item(s), 60,000 points in, 60,000 out, 10 file(s) written")
    out = demo_copy.parent / "out"
    assert sorted(p.name for p in out.iterdir()) == ["preview.png"] + [f"scan_0{i}.{s}" for i in (1, 2, 3)
                                                                       for s in ("las", "laz", "ply")]
    world = demo_world_matrices(demo_copy)
    for stem in ("scan_01", "scan_02"):
        original = laspy.read(demo_copy / f"data/{stem}.laz")
        expected = moved(world[f"{stem}.laz"], original.x, original.y, original.z)
        for suffix in ("las", "laz"):
            written = laspy.read(out / f"{stem}.{suffix}")
            for axis, values in zip("xyz", expected):
                assert np.abs(np.asarray(written[axis]) - values).max() <= 0.0005
            assert np.array_equal(written.intensity, original.intensity)
            assert np.array_equal(written.gps_time, original.gps_time)
            assert np.array_equal(written.classification, original.classification)
            assert written.header.scales.tolist() == [0.001] * 3
        ply = read_plain_ply(out / f"{stem}.ply")
        for axis, values in zip("xyz", expected):
            assert np.abs(ply[axis] - values).max() < 1e-6
        assert np.array_equal(np.asarray(open3d.io.read_point_cloud(str(out / f"{stem}.ply")).points)[:, 0], ply["x"])
    scan_03 = read_plain_ply(demo_copy / "data/scan_03.ply")
    written = laspy.read(out / "scan_03.las")
    assert np.array_equal(written.red, scan_03["red"]) and np.array_equal(written.intensity, scan_03["intensity"])
    run = json.loads(report.read_text())
    assert run["config"]["sha256"] == hashlib.sha256((demo_copy / "demo.yaml").read_bytes()).hexdigest()
    assert run["totals"] == {"items": 3, "points_in": 60000, "points_out": 60000, "outputs": 10,
                             "bytes_written": sum(p.stat().st_size for p in out.iterdir())}
    first = run["items"][0]
    step = first["applied"][0]
    assert step["stage"] == "stages[1] (transform.align, tag align)"
    assert np.allclose(step["matrix"], world["scan_01.laz"], rtol=0, atol=1e-9)
    assert step["alignment"]["layout"]["sub.tm"] == "row_major (detected)"
    assert step["alignment"]["check_world"]["matches"] is True
    for output in first["outputs"]:
        assert output["sha256"] == hashlib.sha256(Path(output["path"]).read_bytes()).hexdigest()
    assert set(run["dependencies"]) >= {"numpy", "laspy", "lazrs", "PyYAML"}


def test_same_config_and_inputs_give_the_same_bytes(demo_copy, tmp_path):
    assert cli("run", "-q", demo_copy / "demo.yaml", "--jobs", "2", "--report", tmp_path / "a.json").returncode == 0
    assert cli("run", "-q", demo_copy / "demo.yaml", "--report", tmp_path / "b.json").returncode == 0
    digests = [[o["sha256"] for i in json.loads((tmp_path / n).read_text())["items"] for o in i["outputs"]]
               for n in ("a.json", "b.json")]
    assert digests[0] == digests[1]


def test_outputs_are_read_back_for_their_checksum_only_when_a_report_is_asked_for(demo_copy, tmp_path, monkeypatch):
    import pipeline.run_item

    read_back = []
    real = pipeline.run_item.file_digest
    monkeypatch.setattr(pipeline.run_item, "file_digest", lambda path: read_back.append(path) or real(path))
    assert main(["run", "-q", "--jobs", "1", str(demo_copy / "demo.yaml")]) == 0
    assert read_back == []
    assert main(["run", "-q", "--jobs", "1", "--report", str(tmp_path / "run.json"), str(demo_copy / "demo.yaml")]) == 0
    assert sorted(Path(p).suffix for p in read_back) == [".part"] * 6  # the LAS and LAZ files; PLY hashes as it writes
    outputs = [o for item in json.loads((tmp_path / "run.json").read_text())["items"] for o in item["outputs"]]
    assert all(o["sha256"] == hashlib.sha256(Path(o["path"]).read_bytes()).hexdigest() for o in outputs)


def test_dry_run_lists_and_writes_nothing(demo_copy):
    done = cli("run", demo_copy / "demo.yaml", "--dry-run")
    assert done.returncode == 0
    lines = done.stdout.splitlines()
    assert lines[0] == "3 item(s)"
    assert lines[1] == f"[0] scan_01 (id scan_01, 20,000 points) from {demo_copy}/data/scan_01.laz"
    assert lines[2] == f"    -> {demo_copy.parent}/out/scan_01.las  (stages[2] (sink.las, tag las))"
    assert not (demo_copy.parent / "out").exists()


def test_set_overrides_an_option(demo_copy):
    done = cli("run", "-q", demo_copy / "demo.yaml", "--set", "ply.path=../ply/{id}.ply", "--dry-run")
    assert done.returncode == 0
    assert f"    -> {demo_copy.parent}/ply/scan_01.ply  (stages[4] (sink.ply, tag ply))" in done.stdout.splitlines()


def test_config_errors_exit_1_with_one_line_each(tmp_path):
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [a.las]
          - type: transform.matrix
            matrix: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
            layout: row_major
          - type: sink.lass
            path: out/{name}.las
    """)
    done = cli("run", path)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: {path}:6: stages[1] (transform.matrix) > matrix: expected 16 numbers, got 15",
        f"error: {path}:8: stages[2] (sink.lass): unknown stage type 'sink.lass'; did you mean 'sink.las'? "
        f"(known: {', '.join(Registry.from_entry_points().names())})",
    ]
    assert done.stdout == ""


def test_validate_reports_every_input_that_matches_nothing_with_its_line(tmp_path):
    make_las(tmp_path / "in.las", [[0, 0, 0]])
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths:
              - in.las
              - "data/*.lax"
              - nothere.las
          - type: sink.las
            path: out/{name}.las
    """)
    done = cli("validate", path)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.splitlines() == [
        f"error: {path}:6: stages[0] (source.files) > paths[1]: no file matches {tmp_path}/data/*.lax",
        f"error: {path}:7: stages[0] (source.files) > paths[2]: {tmp_path}/nothere.las: no such file"]
    (tmp_path / "data").mkdir()
    make_las(tmp_path / "data/a.lax", [[0, 0, 0]])
    make_las(tmp_path / "nothere.las", [[0, 0, 0]])
    assert cli("validate", path).returncode == 0


def test_validate_json(demo_copy, tmp_path):
    done = cli("validate", demo_copy / "demo.yaml", "--json")
    assert done.returncode == 0
    result = json.loads(done.stdout)
    assert result["valid"] is True and result["errors"] == []
    assert [s["type"] for s in result["stages"]] == ["source.files", "transform.align", "sink.las", "sink.las", "sink.ply",
                                                  "sink.preview"]
    bad = write_config(tmp_path, "version: 2\nstages: []\n")
    done = cli("validate", bad, "--json")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"valid": False, "stages": [], "errors": [
        f"{bad}:1: unsupported version 2; this tool reads version 1",
        f"{bad}:2: expected a non-empty list of stages"]}


def test_stages_lists_options_with_types_and_defaults():
    done = cli("stages", "--json")
    assert done.returncode == 0
    stages = {s["type"]: s for s in json.loads(done.stdout)}
    assert set(stages) == {"source.files", "source.cupix", "transform.matrix", "transform.align", "transform.crop",
                           "transform.decimate", "transform.filter", "transform.voxel", "transform.outliers",
                           "transform.normals", "sink.las", "sink.ply", "sink.preview", "sink.overlap"}
    chunk = next(o for o in stages["source.files"]["options"] if o["name"] == "chunk_size")
    assert chunk == {"name": "chunk_size", "type": "integer >= 1", "required": False, "default": 65536,
                     "doc": "points per chunk"}
    text = cli("stages").stdout
    assert "    layout (row_major | column_major; default null): how 16 numbers are stored" in text


@pytest.mark.parametrize("columns", [60, 100])
def test_stages_wraps_to_the_terminal_width(columns):
    done = subprocess.run([sys.executable, "-m", "pipeline", "stages"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": str(columns)})
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and len(lines) > 50
    assert max(map(len, lines)) <= columns - 1
    assert ("    chunk_size (integer >= 1; default 65536): points per chunk" in lines) == (columns == 100)


def test_runtime_error_is_one_line_without_traceback(tmp_path):
    make_las(tmp_path / "far.las", [[0, 0, 0], [1000, 0, 0]], scale=0.001)
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [far.las]
          - type: transform.matrix
            matrix: [[3000, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
          - type: sink.las
            path: out/{name}.las
          - type: sink.ply
            path: out/{name}.ply
    """)
    done = cli("run", "-q", path)
    assert done.returncode == 1
    assert done.stderr == ("error: stages[2] (sink.las): far: x values 0.0..3000000.0 do not fit LAS 32-bit integers "
                           "with scale 0.001 and offset 0\n")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    debug = cli("run", "-q", "--debug", path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_usage_errors_exit_2(demo_copy):
    assert cli("run").returncode == 2
    assert cli("frobnicate").returncode == 2
    done = cli("run", demo_copy / "demo.yaml", "--set", "nosuchtag.path=x")
    assert done.returncode == 2
    assert done.stderr == ("pipeline: error: --set nosuchtag.path: no stage has tag 'nosuchtag' "
                           "(tags: align, input, las, laz, ply, preview)\n")


def test_missing_environment_variable_is_named(tmp_path):
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: ["${SCANS_DIR}/*.las"]
          - type: sink.las
            path: out/{name}.las
    """)
    env = {k: v for k, v in os.environ.items() if k != "SCANS_DIR"}
    done = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(path)], capture_output=True, text=True,
                          env=env)
    assert done.returncode == 1
    assert done.stderr == f"error: {path}:4: stages[0] > paths[0]: environment variable SCANS_DIR is not set\n"


def test_main_in_process_returns_codes(demo_copy, capsys):
    assert main(["validate", str(demo_copy / "demo.yaml")]) == 0
    assert capsys.readouterr().out.startswith(f"{demo_copy / 'demo.yaml'}: valid: source.files (input) -> ")
    assert main(["run"]) == 2


def test_progress_lines_when_not_a_terminal(tmp_path):
    make_las(tmp_path / "a.las", np.random.default_rng(0).uniform(0, 10, (1000, 3)))
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [a.las]
          - type: sink.las
            path: out/{name}.laz
    """)
    done = cli("run", path)
    assert done.returncode == 0
    assert "\r" not in done.stderr  # a pipe gets plain lines, never a redrawn bar
    assert cli("run", "-q", path).stderr == ""
