"""Executors: the per-item work is a function of (plan, task) that pickles, and runs in processes started
with spawn as well as fork, with the same outputs as in this process."""
import pickle

import pytest

from pipeline import config
from pipeline.runner import Runner
from tests.conftest import write_config
from tests.cupix_stand_in import CupixStandIn
from tests.stages.test_cupix_loopback import TOKEN, capture, config as cupix_config  # noqa: F401 (a fixture)

SINKS = "  - type: sink.las\n    path: out/{sub}.laz\n  - type: sink.ply\n    path: out/{sub}.ply\n"


def outputs(folder):
    return {path.name: path.read_bytes() for path in sorted((folder / "out").iterdir())}


def test_a_cupix_pipeline_runs_in_spawned_workers_with_the_same_outputs(tmp_path, capture, registry, monkeypatch):
    items, files = capture
    monkeypatch.setenv("CUPIX_API_KEY", TOKEN)
    written = {}
    with CupixStandIn(items, files, token=TOKEN) as stand_in:
        for jobs, start in ((1, "fork"), (2, "spawn")):
            folder = tmp_path / f"{jobs}-{start}"
            folder.mkdir()
            runner = Runner(config.load(cupix_config(folder, stand_in, sinks=SINKS), registry), registry, jobs=jobs,
                            start_method=start)
            plan = runner.plan()
            assert pickle.loads(pickle.dumps(plan)).items == plan.items  # what a spawned worker receives
            results = runner.run(plan)
            assert [r.points_in for r in results.items] == [2000, 2000, 2000]
            written[start] = outputs(folder)
    assert sorted(written["fork"]) == ["5311.laz", "5311.ply", "5312.laz", "5312.ply", "5313.laz", "5313.ply"]
    assert written["spawn"] == written["fork"]


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_worker_results_come_back_in_item_order(tmp_path, start):
    from pipeline.registry import Registry
    from tests.fakes import ENTRIES

    registry = Registry(ENTRIES)
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.counting
            items: 5
            points: 30
            chunk_size: 7
          - type: sink.ply
            path: out/{name}.ply
    """)
    runner = Runner(config.load(path, registry), registry, jobs=2, start_method=start)
    results = runner.run(runner.plan())
    assert [r.item.name for r in results.items] == [f"item{n}" for n in range(5)]
    assert [r.points_out for r in results.items] == [30] * 5
    assert all(r.outputs[0]["path"].endswith(f"out/item{n}.ply") for n, r in enumerate(results.items))
