"""What a run will do, decided before any point is read: the stages, the items, every output's final path,
what each stage decided for each item, and the tasks (items processed together). Plain data that pickles,
so that the per-item work can run in another process or on another machine."""
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import PipelineError


@dataclass
class Stages:
    source: object
    transforms: list
    sinks: list

    @staticmethod
    def build(config, registry):
        built = [registry.get(spec.type)(spec.options, label=spec.label) for spec in config.stages]
        return Stages(built[0], built[1:1 + len(config.transforms)], built[1 + len(config.transforms):])


@dataclass
class Plan:
    """`targets` maps an item's index to [(sink label, final path), ...]; `merged` lists the files of
    `merge: true` sinks, which receive every item. `decisions` holds what each stage decided for the run in
    `prepare` ({item index: decision}): the source's first, then each transform's. `tasks` are tuples of item
    indexes, each run as a whole by one worker: one item each, or every item when a sink merges them.
    `gathered` lists the files of gathering sinks (Sink.gathers), written once at the end of the run."""

    stages: Stages
    items: list
    targets: dict
    merged: list = field(default_factory=list)
    report: Optional[Path] = None  # the run report's file (--report), committed with the outputs
    decisions: tuple = ()
    tasks: tuple = ()
    gathered: list = field(default_factory=list)

    def all_targets(self):
        outputs = [Path(path) for pairs in [*self.targets.values(), self.merged, self.gathered] for _, path in pairs]
        return outputs + ([self.report] if self.report else [])

    def source_decision(self, item):
        return self.decisions[0].get(item.index) if self.decisions else None

    def transform_decisions(self, item):
        return [decided.get(item.index) for decided in self.decisions[1:]]

    def task_targets(self, task):
        """The final paths of every file a task writes."""
        pairs = [pair for index in task for pair in self.targets[index]] + self.merged  # merging: one task
        return [Path(path) for _, path in pairs]

    def task_items(self, task):
        by_index = {item.index: item for item in self.items}
        return [by_index[index] for index in task]


def is_merging(sink):
    return bool(sink.options.get("merge"))


def writes_per_item(sink):
    """Whether a sink writes files of its own for each item (not one file of every item, nor files at the end)."""
    return not is_merging(sink) and not sink.gathers


def file_identity(path):
    """What tells one file from another whatever its name (device and inode: a hard link is the same
    file), or None when there is no such file."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def make_plan(stages: Stages, inputs=(), report=None) -> Plan:
    """Lists the source's items, checks that no two outputs collide and no input is overwritten (the
    source's files and `inputs`, e.g. the config; by path and by identity, so a hard link of an input is
    refused too), and has every stage decide what it decides for the run. `report` is the run report's
    path, claimed like an output."""
    items = stages.source.items()
    targets, owners = {}, {}
    inputs = [*stages.source.inputs(items), *inputs]
    input_paths = {Path(p).resolve() for p in inputs}
    input_files = {identity for identity in map(file_identity, inputs) if identity}

    def claim(sink_label, path, item, is_report=False):
        resolved = Path(path).resolve()
        if resolved.is_dir():
            raise PipelineError(f"{sink_label}: output {path} is a folder; choose a file name")
        if resolved in input_paths or file_identity(resolved) in input_files:
            raise PipelineError(f"{sink_label}: output {path} is an input file of this run; choose another path")
        if resolved in owners:
            other_sink, other_item = owners[resolved]
            if is_report:
                raise PipelineError(f"--report {report}: {other_sink} writes that file; choose another path for "
                                    "the report")
            if item is None or other_item is None:  # a file written once at the end
                raise PipelineError(f"{sink_label}: {other_sink} writes {path} too; choose another path")
            also = f" (also written by {other_sink})" if other_sink != sink_label else ""
            raise PipelineError(f"{sink_label}: items {other_item.name!r} and {item.name!r} would both write "
                                f"{path}{also}; add a field that differs between them, such as {{index}}, "
                                "to the path template")
        owners[resolved] = (sink_label, item)
        return (sink_label, str(path))

    merged = []
    for sink in filter(is_merging, stages.sinks):
        paths = {str(p) for item in items for p in sink.targets(item)}
        if len(paths) > 1:
            raise PipelineError(f"{sink.label}: merge: true needs one file for all items, but the path template gives "
                                f"{len(paths)} ({', '.join(sorted(paths)[:3])}, ...); use fields every item shares")
        if items:
            merged.append(claim(sink.label, paths.pop(), items[0]))
    gathered = [claim(sink.label, path, None) for sink in stages.sinks if sink.gathers for path in sink.outputs()]
    for item in items:
        targets[item.index] = [claim(sink.label, path, item) for sink in stages.sinks if writes_per_item(sink)
                               for path in sink.targets(item)]
    if report is not None:
        claim(f"--report {report}", report, None, is_report=True)
    decisions = tuple(dict(stage.prepare(items) or {}) for stage in [stages.source, *stages.transforms])
    for sink in stages.sinks:
        sink.prepare(items)  # a sink may refuse the run before any point is read; it decides nothing per item
    indexes = [item.index for item in items]
    tasks = (tuple(indexes),) if merged else tuple((index,) for index in indexes)
    return Plan(stages, items, targets, merged, Path(report) if report is not None else None, decisions, tasks,
                gathered)
