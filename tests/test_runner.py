import logging
import os

import laspy
import numpy as np
import pytest

from pipeline.errors import PipelineError, StageError
from pipeline.registry import Registry
from pipeline import config
from pipeline.runner import Runner
from tests.conftest import run, write_config
from tests.fakes import ENTRIES, points


@pytest.fixture
def registry():
    return Registry(ENTRIES)


def files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


TWO_SINKS = """
    version: 1
    stages:
      - type: source.counting
        items: 2
        points: 25
        chunk_size: 10
      - type: sink.las
        path: out/{name}.las
      - type: sink.ply
        path: out/{name}.ply
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_sink_receives_every_item(tmp_path, registry, jobs):
    results = run(tmp_path, registry, TWO_SINKS, jobs=jobs)
    assert files_under(tmp_path) == ["config.yaml", "out/item0.las", "out/item0.ply", "out/item1.las", "out/item1.ply"]
    assert [r.points_in for r in results] == [25, 25]
    for index in (0, 1):
        expected = points(index, 25)
        written = laspy.read(tmp_path / f"out/item{index}.las")
        assert np.allclose(written.x, expected["x"], atol=0.0005, rtol=0)
        assert np.array_equal(written.intensity, expected["intensity"])
        assert results[index].outputs[0]["path"] == str(tmp_path / f"out/item{index}.las")
        assert results[index].outputs[0]["size"] == os.path.getsize(tmp_path / f"out/item{index}.las")


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_failing_stage_leaves_no_output(tmp_path, registry, jobs):
    body = TWO_SINKS.replace("      - type: sink.las", "      - type: transform.failing\n        item: 1\n"
                                                         "      - type: sink.las", 1)
    with pytest.raises(StageError, match=r"^stages\[1\] \(transform.failing\): boom on item1$"):
        run(tmp_path, registry, body, jobs=jobs)
    assert files_under(tmp_path) == ["config.yaml"]  # not even the first item's files, nor a temporary one


def test_an_interrupt_leaves_no_output(tmp_path, registry):
    body = TWO_SINKS.replace("      - type: sink.las", "      - type: transform.failing\n        item: 1\n"
                                                         "        error: interrupt\n      - type: sink.las", 1)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, registry, body)
    assert files_under(tmp_path) == ["config.yaml"]


def test_an_existing_file_survives_a_failed_run(tmp_path, registry):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/item0.las").write_bytes(b"previous run")
    body = TWO_SINKS.replace("      - type: sink.las", "      - type: transform.failing\n        item: 1\n"
                                                         "      - type: sink.las", 1)
    with pytest.raises(StageError):
        run(tmp_path, registry, body)
    assert (tmp_path / "out/item0.las").read_bytes() == b"previous run"


def test_two_items_on_one_path_is_refused_before_writing(tmp_path, registry):
    body = TWO_SINKS.replace("out/{name}.las", "out/all.las")
    with pytest.raises(PipelineError) as error:
        run(tmp_path, registry, body)
    assert str(error.value) == (f"stages[1] (sink.las): items 'item0' and 'item1' would both write "
                                f"{tmp_path}/out/all.las; add a field that differs between them, such as {{index}}, "
                                "to the path template")
    assert files_under(tmp_path) == ["config.yaml"]


def test_source_chunks_are_bounded_and_whole_cloud_stage_gets_one(tmp_path, registry, caplog):
    body = """
        version: 1
        stages:
          - type: source.counting
            items: 1
            points: 25
            chunk_size: 10
          - type: transform.whole
          - type: sink.ply
            path: out/{name}.ply
            ascii: true
    """
    with caplog.at_level(logging.INFO):
        run(tmp_path, registry, body)
    assert "whole cloud chunk of 25" in caplog.text
    assert "stages[1] (transform.whole) holds the whole of item0 in memory: about 0.0 MB" in caplog.text
    lines = (tmp_path / "out/item0.ply").read_text().splitlines()
    assert lines[-1].split()[-1] == "25"


def test_output_may_not_replace_an_input(tmp_path, conformance):
    from pipeline.registry import Registry as Real

    source = tmp_path / "in.las"
    source.write_bytes((conformance / "las/simple.las").read_bytes())
    body = """
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
          - type: sink.las
            path: "{name}.las"
    """
    with pytest.raises(PipelineError, match=r"output .*in.las is an input file of this run; choose another path"):
        run(tmp_path, Real.from_entry_points(), body)


def test_what_a_whole_cloud_stage_yields_is_cut_back_to_the_chunk_size(tmp_path, registry, caplog):
    body = """
        version: 1
        stages:
          - type: source.counting
            items: 1
            points: 25
            chunk_size: 10
          - type: transform.whole
          - type: sink.lengths
    """
    with caplog.at_level(logging.INFO, logger="tests"):
        run(tmp_path, registry, body)
    assert [r.getMessage() for r in caplog.records if r.name == "tests"] == [
        "whole cloud chunk of 25", "chunk of 10", "chunk of 10", "chunk of 5"]


def test_a_chunk_unlike_what_its_stage_declared_is_an_error_naming_the_stage(tmp_path, registry):
    body = TWO_SINKS.replace("      - type: sink.las", "      - type: transform.mislabelled\n      - type: sink.las", 1)
    with pytest.raises(StageError) as error:
        run(tmp_path, registry, body)
    assert str(error.value) == ("stages[1] (transform.mislabelled): yielded a chunk with attributes x f8, y f8, z f8, "
                                "intensity u2, extra f4 but declared x f8, y f8, z f8, intensity u2")
    assert files_under(tmp_path) == ["config.yaml"]


def test_a_stage_stream_is_closed_when_the_run_stops_early(tmp_path, registry, caplog):
    import gc
    body = TWO_SINKS.replace("      - type: sink.las", "      - type: transform.tidy\n      - type: transform.failing\n"
                                                         "        item: 0\n      - type: sink.las", 1)
    gc.disable()  # the stream must be closed by the runner, not found by the garbage collector
    try:
        with caplog.at_level(logging.INFO, logger="tests"), pytest.raises(StageError):
            run(tmp_path, registry, body)
        assert "tidied item0" in caplog.messages
    finally:
        gc.enable()


def test_the_report_gives_the_points_into_and_out_of_each_transform(tmp_path):
    import json
    from tests.conftest import cli, make_las, write_config
    make_las(tmp_path / "in.las", np.column_stack([np.arange(100.0), np.zeros(100), np.zeros(100)]))
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
          - type: transform.decimate
            step: 2
          - type: transform.crop
            bounds: [[0, -1], [49, 1]]
          - type: sink.las
            path: out/{name}.las
    """)
    done = cli("run", "-q", path, "--report", tmp_path / "run.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    [item] = json.loads((tmp_path / "run.json").read_text())["items"]
    assert item["stages"] == [{"stage": "stages[1] (transform.decimate)", "points_in": 100, "points_out": 50},
                              {"stage": "stages[2] (transform.crop)", "points_in": 50, "points_out": 25}]
    assert (item["points_in"], item["points_out"]) == (100, 25)


GATHERING = """
    version: 1
    stages:
      - type: source.counting
        items: 3
        points: 25
        chunk_size: 10
      - type: sink.las
        path: out/{name}.las
      - type: sink.totals
        path: out/totals.txt
"""


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_gathering_sink_gets_what_each_item_kept_wherever_it_ran_and_writes_once_at_the_end(tmp_path, registry,
                                                                                              jobs):
    runner = Runner(config.load(write_config(tmp_path, GATHERING), registry), registry, jobs=jobs)
    plan = runner.plan()
    assert plan.gathered == [("stages[2] (sink.totals)", str(tmp_path / "out/totals.txt"))]
    assert [path for _, path in plan.targets[0]] == [str(tmp_path / "out/item0.las")]  # no per-item file of its own
    assert len(plan.tasks) == 3  # the items stay apart: they may run in parallel
    results = runner.run(plan)
    lines = [line.split() for line in (tmp_path / "out/totals.txt").read_text().splitlines()]
    assert [(name, int(points)) for name, points, _ in lines] == [("item0", 25), ("item1", 25), ("item2", 25)]
    pids = {int(pid) for _, _, pid in lines}
    assert (pids == {os.getpid()}) if jobs == 1 else (os.getpid() not in pids)
    assert results.merged == [{"sink": "stages[2] (sink.totals)", "path": str(tmp_path / "out/totals.txt"), "items": 3,
                               "size": (tmp_path / "out/totals.txt").stat().st_size,
                               "sha256": results.merged[0]["sha256"]}]


def test_a_gathering_sink_that_fails_at_the_end_leaves_no_output(tmp_path, registry):
    body = GATHERING + "        fail: 'yes'\n"
    with pytest.raises(StageError, match=r"^stages\[2\] \(sink.totals\): failed at the end$"):
        run(tmp_path, registry, body)
    assert files_under(tmp_path) == ["config.yaml"]


def test_a_gathering_sink_file_may_not_be_another_output(tmp_path, registry):
    body = GATHERING.replace("out/totals.txt", "out/item1.las")
    with pytest.raises(PipelineError) as raised:
        run(tmp_path, registry, body)
    assert str(raised.value) == (f"stages[1] (sink.las): stages[2] (sink.totals) writes {tmp_path}/out/item1.las too; "
                                 "choose another path")
