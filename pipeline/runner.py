"""Runs a config: builds its stages, plans the run, has an executor run every task, and commits the outputs.

Items run one after the other in this process, or in `jobs` worker processes (see executors.py); the
per-item work is run_item.py's. All outputs are staged and renamed into place only when every item has
succeeded (see staging.py).
"""
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import PipelineError, SinkError
from .executors import InProcess, LocalProcesses
from .memory import keep_freed_memory
from .plan import Plan, Stages, make_plan
from .progress import Progress
from .run_item import output_record
from .staging import Staging, sweep

log = logging.getLogger(__name__)


@dataclass
class Results:
    items: list  # run_item.ItemResult, in item order
    merged: list = field(default_factory=list)  # what the report says of the files of all items (merging, gathering)
    executor: dict = field(default_factory=dict)  # what ran the tasks (Executor.describe)


class Runner:
    def __init__(self, config, registry, jobs=1, progress: Optional[Progress] = None, checksums=True,
                 start_method="fork", executor=None):
        self.checksums = checksums  # the sha256 of every output, for the report
        self.start_method = start_method  # how worker processes start (fork or spawn)
        self.chosen_executor = executor  # an Executor (e.g. Dask's); by default, this process or `jobs` workers
        self.config = config
        self.registry = registry
        self.jobs = max(1, jobs)
        self.progress = progress or Progress()
        self.stages = Stages.build(config, registry)

    def plan(self, report=None) -> Plan:
        """The run's items and outputs; `report` is the path of the run report, if it goes to a file."""
        return make_plan(self.stages, self.config_inputs(), report)

    def config_inputs(self):
        """The files the config reads besides the source's: the config itself and every file an option names."""
        files = [self.config.path]
        for spec in self.config.stages:
            for option in self.registry.get(spec.type).options:
                value = spec.options.get(option.name)
                if option.kind.is_path and not option.kind.is_template:
                    files += [v for v in (value if isinstance(value, list) else [value])
                              if isinstance(v, str) and os.path.isfile(v)]
        return files

    def executor(self, plan):
        if self.chosen_executor is not None:
            return self.chosen_executor
        if self.jobs > 1 and plan.merged and len(plan.items) > 1:
            log.info("a sink merges every item into one file: items are processed one after another")
        if self.jobs == 1 or len(plan.tasks) <= 1:
            return InProcess()
        return LocalProcesses(self.jobs, self.start_method)

    def run(self, plan: Plan, report=None, on_commit=lambda: None) -> Results:
        """Processes every item; on success renames all outputs into place, on any failure removes them.

        `report(results)` gives the text of the run report when the plan has a report file: it is staged
        and committed with the outputs, so a report that cannot be written leaves no output either.
        `on_commit()` is called when the outputs are about to be renamed into place (the CLI then stops
        taking Ctrl-C for an interruption)."""
        keep_freed_memory()
        staging = Staging(checksums=self.checksums)
        sweep({Path(path).parent for path in plan.all_targets()})
        counts = [item.point_count for item in plan.items]
        self.progress.start(len(plan.items), sum(counts) if None not in counts else None)
        try:
            executor = self.executor(plan)
            done = executor.run(plan, staging, self.progress)
            items = sorted((r for task in done for r in task.items), key=lambda r: r.item.index)
            merged = [record for task in done for record in task.merged] + finish_gathering(plan, items, staging)
            results = Results(items, merged, executor.describe())
            if plan.report is not None:
                write_report(plan.report, report(results), staging)
            on_commit()
            staging.commit(plan.all_targets())
        except BaseException:
            staging.discard(plan.all_targets())
            raise
        finally:
            self.stages.source.close()
            self.progress.finish()
        return results


def finish_gathering(plan, items, staging):
    """Has every gathering sink make its files from what its writers kept of each item; what the report says of
    them."""
    records = []
    for sink in plan.stages.sinks:
        if sink.gathers:
            try:
                described = sink.finish([(result.item, result.gathered.get(sink.label)) for result in items], staging)
            except OSError as error:  # a full disk, a file where a folder should be: one line, as for any sink
                finals = ", ".join(path for label, path in plan.gathered if label == sink.label)
                raise SinkError(f"{sink.label}: cannot write {finals}: {error.strerror or error}") from error
            records += [output_record(staging, label, path, {}, {str(staging.temporary(p)): facts
                                                                  for p, facts in described.items()})
                        for label, path in plan.gathered if label == sink.label]
    return records


def write_report(path, text, staging):
    try:
        staging.create(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise PipelineError(f"--report {path}: cannot write the report: {error.strerror or error}") from error
