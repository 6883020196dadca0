"""What holds when things go wrong around a run: the report file, full and read-only disks, files in the
way, long names, signals (SIGINT, SIGTERM, SIGKILL) and the staged files a killed run leaves behind.

Disks are real: a tmpfs of a few hundred KiB, or mounted read-only, in a mount namespace of the child's
own (`unshare`), so nothing is mounted on the machine itself."""
import json
import os
import random
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import laspy
import numpy as np
import pytest

from pipeline import cli as cli_module
from pipeline.staging import Staging, host_tag, sweep
from tests.conftest import cli, make_las, write_config

LAS_TO_ALL = """
    version: 1
    stages:
      - type: source.files
        paths: [in.las]
      - type: sink.las
        path: {out}/{{name}}.las
      - type: sink.las
        path: {out}/{{name}}.laz
      - type: sink.ply
        path: {out}/{{name}}.ply
"""


@pytest.fixture
def survey(tmp_path):
    """in.las, 20,000 points, in tmp_path."""
    make_las(tmp_path / "in.las", np.random.default_rng(3).uniform(0, 1000, (20_000, 3)))
    return tmp_path


def files_in(folder):
    return sorted(p.name for p in Path(folder).iterdir()) if Path(folder).exists() else []


def in_namespace(mount, *args, cwd):
    """`python -m pipeline ARGS` in a mount namespace of its own where `mount` (a shell command) ran first."""
    command = f"{mount} && exec {sys.executable} -m pipeline " + " ".join(f"'{a}'" for a in args)
    return subprocess.run(["unshare", "--map-root-user", "--mount", "sh", "-c", command], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


# --- the report file is claimed, staged and committed like every output ---------------------------------

@pytest.mark.parametrize("report, message", [
    ("in.las", "--report in.las: output in.las is an input file of this run; choose another path"),
    ("config.yaml", "--report config.yaml: output config.yaml is an input file of this run; choose another path"),
    ("out/in.las", "--report out/in.las: stages[1] (sink.las) writes that file; choose another path for the report"),
    ("out", "--report out: output out is a folder; choose a file name"),
])
def test_the_report_may_not_replace_an_input_an_output_or_the_config(survey, report, message):
    path = write_config(survey, LAS_TO_ALL.format(out="out"))
    (survey / "out").mkdir()
    before = {p: p.read_bytes() for p in (survey / "in.las", path)}

    done = cli("run", "-q", "--report", report, path.name, cwd=survey)

    assert (done.returncode, done.stderr) == (1, f"error: {message}\n")
    assert {p: p.read_bytes() for p in before} == before
    assert files_in(survey / "out") == []


def test_the_report_is_written_with_the_outputs_and_only_with_them(survey):
    path = write_config(survey, LAS_TO_ALL.format(out="out"))

    assert cli("run", "-q", "--report", "reports/run.json", path, cwd=survey).returncode == 0
    report = json.loads((survey / "reports/run.json").read_text())
    assert [o["path"] for o in report["items"][0]["outputs"]] == [str(survey / "out" / f"in.{e}") for e in
                                                                   ("las", "laz", "ply")]
    assert files_in(survey / "reports") == ["run.json"]

    (survey / "in.las").write_bytes(b"LASF broken")  # a failing run: no report, and the earlier one stays
    done = cli("run", "-q", "--report", "reports/run.json", path, cwd=survey)
    assert done.returncode == 1
    assert json.loads((survey / "reports/run.json").read_text()) == report
    assert files_in(survey / "reports") == ["run.json"]


def test_a_report_that_cannot_be_written_keeps_every_output_out(survey):
    path = write_config(survey, LAS_TO_ALL.format(out="out"))
    (survey / "locked").mkdir()

    done = in_namespace("mount -t tmpfs -o ro,size=64k tmpfs locked", "run", "-q", "--report", "locked/run.json",
                        path, cwd=survey)

    assert (done.returncode, done.stderr) == (
        1, "error: --report locked/run.json: cannot write the report: Read-only file system\n")
    assert files_in(survey / "out") == []


# --- one line naming the sink, the item and the final file ----------------------------------------------

@pytest.mark.parametrize("extension", ["las", "laz", "ply"])
def test_a_full_disk_is_one_line_naming_the_final_file(survey, extension):
    path = write_config(survey, f"""
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
          - type: sink.{'ply' if extension == 'ply' else 'las'}
            path: small/{{name}}.{extension}
    """)
    (survey / "small").mkdir()

    done = in_namespace("mount -t tmpfs -o size=32k tmpfs small", "run", "-q", path, cwd=survey)

    assert (done.returncode, done.stderr) == (1, f"error: stages[1] (sink.{'ply' if extension == 'ply' else 'las'}): "
                                                 f"in: cannot write {survey}/small/in.{extension}: "
                                                 "No space left on device\n")
    assert files_in(survey / "small") == []


def test_a_read_only_folder_is_one_line(survey):
    path = write_config(survey, LAS_TO_ALL.format(out="locked"))
    (survey / "locked").mkdir()

    done = in_namespace("mount -t tmpfs -o ro,size=64k tmpfs locked", "run", "-q", path, cwd=survey)

    assert (done.returncode, done.stderr) == (
        1, f"error: stages[1] (sink.las): in: cannot write {survey}/locked/in.las: Read-only file system\n")


def test_a_file_where_the_output_folder_should_be_is_one_line(survey):
    path = write_config(survey, LAS_TO_ALL.format(out="taken/deeper"))
    (survey / "taken").write_text("mine")

    done = cli("run", "-q", path, cwd=survey)

    assert (done.returncode, done.stderr) == (
        1, f"error: stages[1] (sink.las): in: cannot write {survey}/taken/deeper/in.las: "
           f"{survey}/taken is a file, not a folder\n")
    assert (survey / "taken").read_text() == "mine"


def test_a_name_too_long_for_its_staging_name_is_written_under_its_own_name(survey):
    name = "n" * (255 - len(".laz"))
    path = write_config(survey, LAS_TO_ALL.format(out="out").replace("{name}.laz", f"{name}.laz"))

    done = cli("run", "-q", path, cwd=survey)

    assert done.returncode == 0, done.stderr
    assert files_in(survey / "out") == ["in.las", "in.ply", f"{name}.laz"]
    assert len(laspy.read(survey / "out" / f"{name}.laz").points) == 20_000


def test_long_names_get_distinct_staging_names_of_at_most_255_bytes():
    staging = Staging()
    first, second = (staging.temporary(f"out/{'é' * 120}{end}.las") for end in "ab")

    assert first != second
    assert max(len(first.name.encode()), len(second.name.encode())) <= 255
    assert first.name.endswith(f".{staging.token}.part") and first.parent == Path("out")
    assert staging.temporary("out/short.las") == Path(f"out/.short.las.{staging.token}.part")


def test_a_hard_link_of_an_input_is_refused_as_the_input_itself(survey):
    os.link(survey / "in.las", survey / "linked.las")
    path = write_config(survey, LAS_TO_ALL.format(out=".").replace("{name}.las", "linked.las"))
    before = (survey / "in.las").read_bytes()

    done = cli("run", "-q", path, cwd=survey)

    assert (done.returncode, done.stderr) == (
        1, f"error: stages[1] (sink.las): output {survey}/linked.las is an input file of this run; "
           "choose another path\n")
    assert (survey / "in.las").read_bytes() == before


def test_a_bug_exits_3_and_says_how_to_see_it(monkeypatch, capsys):
    def broken(args):
        return {}["missing"]

    monkeypatch.setitem(cli_module.COMMANDS, "stages", broken)

    assert cli_module.main(["stages"]) == 3
    assert capsys.readouterr().err == ("error: internal error (a bug): KeyError: 'missing'; "
                                       "rerun with --debug for the traceback\n")


# --- signals ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """A config that runs for a few seconds (3 files of 1.5 million points into LAZ) and its folder."""
    folder = tmp_path_factory.mktemp("slow")
    rng = np.random.default_rng(0)
    for n in range(3):
        make_las(folder / f"big{n}.las", rng.uniform(0, 1000, (1_500_000, 3)))
    config = write_config(folder, """
        version: 1
        stages:
          - type: source.files
            paths: ["big*.las"]
          - type: sink.las
            path: out/{name}.laz
    """)
    return folder, config


def start(config, *options):
    """`pipeline run` in a process group of its own (as a shell starts a job)."""
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", "-q", *options, str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def handles_signals(process):
    """Whether the pipeline has taken over SIGTERM (it does so first thing, with SIGINT)."""
    try:
        status = Path(f"/proc/{process.pid}/status").read_text()
    except FileNotFoundError:
        return True
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1))) or process.poll() is not None


def children(pid):
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_sigterm_is_handled_like_ctrl_c(slow_run):
    folder, config = slow_run
    process = start(config)
    wait_for(lambda: list(folder.glob("out/.*.part")))
    process.terminate()
    _, stderr = process.communicate(timeout=60)

    assert (process.returncode, stderr) == (143, "terminated: no output was kept\n")
    assert files_in(folder / "out") == []


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_sigkill_leaves_staged_files_that_the_next_run_removes_and_workers_die_with_their_parent(slow_run, jobs):
    folder, config = slow_run
    process = start(config, "--jobs", jobs)
    wait_for(lambda: len(list(folder.glob("out/.*.part"))) >= int(jobs))
    workers = children(process.pid) if jobs == "2" else []
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)

    wait_for(lambda: not any(map(alive, workers)), timeout=2)  # the kernel ends them with their parent
    left = files_in(folder / "out")
    assert left and all(name.startswith(".big") and name.endswith(".part") for name in left)

    done = cli("run", "-q", config)
    assert done.returncode == 0, done.stderr
    assert files_in(folder / "out") == ["big0.laz", "big1.laz", "big2.laz"]
    for name in files_in(folder / "out"):
        (folder / "out" / name).unlink()


def test_sweep_removes_only_the_staged_files_of_runs_that_are_gone(tmp_path):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(finished.stdout)
    host = host_tag()
    names = {
        "dead": f".a.las.{host}-{dead}-abcdef.part",
        "alive": f".b.las.{host}-{os.getpid()}-abcdef.part",  # this process, which wrote it after it started
        "reused": f".c.las.{host}-1-abcdef.part",  # pid 1 started long after this file was written
        "other host": f".d.las.{'0' * 6 if host != '0' * 6 else '1' * 6}-{dead}-abcdef.part",
        "not staged": f"a.las.{host}-{dead}-abcdef.part",
        "user file": "e.las",
    }
    for name in names.values():
        (tmp_path / name).write_text("x")
    os.utime(tmp_path / names["reused"], (0, 0))

    sweep([tmp_path, tmp_path / "missing"])

    assert files_in(tmp_path) == sorted(names[k] for k in ("alive", "other host", "not staged", "user file"))


def test_ctrl_c_to_the_process_group_at_random_moments_always_exits_130_or_finishes(slow_run):
    """A terminal sends SIGINT to every process of the job: 50 runs, each interrupted at a random moment
    after the pipeline has taken over the signals, with --jobs 1 and --jobs 2."""
    folder, config = slow_run
    process = start(config)
    wait_for(lambda: handles_signals(process))
    started = time.monotonic()
    assert process.wait(timeout=60) == 0
    duration = time.monotonic() - started
    for name in files_in(folder / "out"):
        (folder / "out" / name).unlink()
    rng = random.Random(14)
    outcomes = []
    for attempt in range(50):
        jobs = "1" if attempt % 2 else "2"
        process = start(config, "--jobs", jobs)
        wait_for(lambda: handles_signals(process))
        time.sleep(rng.uniform(0, duration))
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        described = f"attempt {attempt}, --jobs {jobs}: exit {process.returncode}, stderr {stderr!r}"
        if process.returncode == 0:
            assert stderr == "" and files_in(folder / "out") == ["big0.laz", "big1.laz", "big2.laz"], described
            for name in files_in(folder / "out"):
                (folder / "out" / name).unlink()
        else:
            assert (process.returncode, stderr) == (130, "interrupted: no output was kept\n"), described
            assert files_in(folder / "out") == [], described
        outcomes.append(process.returncode)
    assert outcomes.count(130) >= 40  # the moments fell inside the runs


# --- values a sink cannot store: one line, never a numpy warning or a wrong value ---------------------

def test_coordinates_that_overflow_the_las_integers_are_one_line_without_numpy_warnings(tmp_path):
    make_las(tmp_path / "tiny.las", [[0, 0, 0], [0, 0, 0]], scale=0.001, offset=[0, 0, 0])
    data = bytearray((tmp_path / "tiny.las").read_bytes())
    struct.pack_into("<3d", data, 131, 1e-300, 1e-300, 1e-300)  # exact, tiny coordinates
    (tmp_path / "tiny.las").write_bytes(bytes(data))
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [tiny.las]
          - type: transform.matrix
            matrix: [[1, 0, 0, 1000000000], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
          - type: sink.las
            path: out/{name}.las
            offset: [0, 0, 0]
    """)

    done = cli("run", "-q", path, cwd=tmp_path)

    assert (done.returncode, done.stderr) == (
        1, "error: stages[2] (sink.las): tiny: x values 1000000000.0..1000000000.0 do not fit LAS 32-bit integers "
           "with scale 1e-300 and offset 0\n")


def test_coordinates_beyond_a_ply_float_with_an_offset_are_refused(tmp_path):
    header = "ply\nformat ascii 1.0\nelement vertex 2\nproperty double x\nproperty double y\nproperty double z\nend_header\n"
    (tmp_path / "far.ply").write_text(header + "0 0 0\n1e39 0 0\n")
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [far.ply]
          - type: sink.ply
            path: out/{name}.ply
            offset: auto
    """)

    done = cli("run", "-q", path, cwd=tmp_path)

    assert (done.returncode, done.stderr) == (
        1, "error: stages[1] (sink.ply): far: x values 0.0..1e+39 minus the offset 0.0 do not fit the float that "
           "`offset` writes; leave `offset` out to write doubles\n")
    assert files_in(tmp_path / "out") == []
