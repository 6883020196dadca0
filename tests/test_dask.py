"""--executor dask: a LocalCluster of processes, and real `dask scheduler` / `dask worker` processes on 127.0.0.1:
the same bytes as a --jobs 1 run, a worker killed mid-task, a bad input, no scheduler, Ctrl-C."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import config
from pipeline.executors import DaskExecutor
from pipeline.registry import Registry
from pipeline.runner import Runner
from tests.conftest import REPO, write_config
from tests.cupix_stand_in import CupixStandIn
from tests.fakes import ENTRIES
from tests.stages.test_cupix_loopback import TOKEN, capture, config as cupix_config  # noqa: F401 (a fixture)

distributed = pytest.importorskip("distributed")
DASK = Path(sys.executable).with_name("dask")


def outputs(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def run_with(path, registry, executor=None, jobs=1):
    runner = Runner(config.load(path, registry), registry, jobs=jobs, executor=executor)
    return runner.run(runner.plan())


def test_the_demo_on_a_local_cluster_writes_the_bytes_of_a_jobs_1_run(demo_copy, tmp_path, registry):
    (demo_copy.parent / "out").mkdir()
    results = run_with(demo_copy / "demo.yaml", registry, DaskExecutor(workers=2))
    assert results.executor["name"] == "dask" and results.executor["scheduler"].startswith("tcp://127.0.0.1:")
    assert [r.points_in for r in results.items] == [r.points_out for r in results.items] != []
    dask_outputs = outputs(demo_copy.parent / "out")
    shutil.rmtree(demo_copy.parent / "out")
    run_with(demo_copy / "demo.yaml", registry)
    assert outputs(demo_copy.parent / "out") == dask_outputs and len(dask_outputs) == 10


def test_a_cupix_run_on_a_local_cluster_writes_the_bytes_of_a_jobs_1_run(tmp_path, capture, registry, monkeypatch):
    items, files = capture
    monkeypatch.setenv("CUPIX_API_KEY", TOKEN)
    sinks = "  - type: sink.las\n    path: out/{sub}.laz\n  - type: sink.ply\n    path: out/{sub}.ply\n"
    written = []
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        for executor in (None, DaskExecutor(workers=2)):
            folder = tmp_path / str(len(written))
            folder.mkdir()
            run_with(cupix_config(folder, stand_in, sinks=sinks), registry, executor)
            written.append(outputs(folder / "out"))
    assert written[0] == written[1] and len(written[0]) == 6


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A `dask scheduler` and a `dask worker` process of two workers, on 127.0.0.1, as a user starts them."""
    folder = tmp_path_factory.mktemp("cluster")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # the workers import the test stages too
    processes = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)], cwd=folder, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 30
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(scheduler_file.read_text())["address"]
    processes.append(subprocess.Popen([str(DASK), "worker", address, "--nworkers", "2", "--nthreads", "1",
                                       "--no-dashboard", "--host", "127.0.0.1"], cwd=folder, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with distributed.Client(address, set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
    yield address
    for process in reversed(processes):
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


def wait_for_workers(address, count=2):
    with distributed.Client(address, set_as_default=False) as client:
        client.wait_for_workers(count, timeout=60)


SLOW = """
    version: 1
    stages:
      - type: source.counting
        items: 4
        points: 40
        chunk_size: 10
      - type: transform.slow
        item: 1
        seconds: "{seconds}"
        marker: {marker}
      - type: sink.las
        path: out/{{name}}.laz
      - type: sink.ply
        path: out/{{name}}.ply
"""


def test_a_worker_killed_mid_task_has_its_task_run_again_elsewhere(tmp_path, cluster):
    registry = Registry(ENTRIES)
    marker = tmp_path / "marker"
    path = write_config(tmp_path, SLOW.format(seconds=2, marker=marker))
    killed = []

    def kill_the_slow_worker():
        while not marker.exists():
            time.sleep(0.05)
        time.sleep(0.3)
        os.kill(int(marker.read_text()), signal.SIGKILL)
        killed.append(True)

    import threading
    killer = threading.Thread(target=kill_the_slow_worker, daemon=True)
    killer.start()
    results = run_with(path, registry, DaskExecutor(cluster, retries=1))
    killer.join()
    assert killed and [r.points_out for r in results.items] == [40] * 4
    dask_outputs = outputs(tmp_path / "out")
    assert not [name for name in dask_outputs if name.endswith(".part")]
    shutil.rmtree(tmp_path / "out")
    run_with(path, registry)  # the marker exists: not slowed
    assert outputs(tmp_path / "out") == dask_outputs
    wait_for_workers(cluster)  # the nanny has started a new worker for the next tests


def pipeline(*args, timeout=60, cwd=None):
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_a_corrupt_input_fails_the_run_naming_the_file_and_keeps_nothing(tmp_path, cluster, conformance):
    for name in ("las/simple.las", "las/4_6_crop.las"):
        shutil.copy(conformance / name, tmp_path)
    vertices = np.zeros(1000, [("x", "<f8"), ("y", "<f8"), ("z", "<f8")])
    vertices["x"][700] = np.nan  # read, and refused, in a worker
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 1000\nproperty double x\nproperty double y\n" \
             "property double z\nend_header\n"
    (tmp_path / "broken.ply").write_bytes(header.encode() + vertices.tobytes())
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: ["*.las", "broken.ply"]
          - type: sink.las
            path: out/{name}.laz
          - type: sink.ply
            path: out/{name}.ply
    """)
    done = pipeline("run", "-q", path, "--executor", "dask", "--scheduler", cluster, cwd=tmp_path)
    assert (done.returncode, done.stderr) == (1, f"error: {tmp_path}/broken.ply: vertex 701: x nan is not a finite "
                                                 "number\n")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_scheduler_that_is_not_there_is_one_line(tmp_path):
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: ["in.las"]
          - type: sink.las
            path: out/{name}.las
    """)
    shutil.copy(REPO / "sample_configs/data/scan_01.laz", tmp_path / "in.las")
    started = time.monotonic()
    done = pipeline("run", "-q", path, "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9", cwd=tmp_path)
    assert time.monotonic() - started < 20
    assert done.returncode == 1 and done.stderr.startswith("error: --scheduler tcp://127.0.0.1:9: no Dask scheduler "
                                                           "answered within 10 s (")
    assert done.stderr.count("\n") == 1 and not (tmp_path / "out").exists()


def test_without_dask_one_line_says_what_to_install(tmp_path):
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: ["in.las"]
          - type: sink.las
            path: out/{name}.las
    """)
    shutil.copy(REPO / "sample_configs/data/scan_01.laz", tmp_path / "in.las")
    script = ("import sys; sys.modules['distributed'] = None; from pipeline.cli import main; "
              f"sys.exit(main(['run', '-q', {str(path)!r}, '--executor', 'dask']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("error: cannot import distributed (needed for --executor dask): ")
    assert done.stderr.endswith("install it with: pip install '.[dask]' (from this repository), or pip install "
                                "'dask[distributed]'\n")


def test_ctrl_c_stops_the_tasks_removes_staged_files_and_exits_130(tmp_path, cluster):
    marker = tmp_path / "marker"
    path = write_config(tmp_path, SLOW.format(seconds=1, marker=marker))
    script = ("import sys; import pipeline.cli as cli; from pipeline.registry import Registry; "
              "from tests.fakes import ENTRIES; cli.load_registry = lambda: Registry(ENTRIES); "
              f"sys.argv = ['pipeline', 'run', '-q', {str(path)!r}, '--executor', 'dask', '--scheduler', {cluster!r}]; "
              "cli.program()")
    child = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 60
    while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), child.communicate()[1]
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130, stderr
    time.sleep(1)  # a task told to stop removes its staged files before it ends; none may be left
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
