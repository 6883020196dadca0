"""Builds the stages of a config and streams every item's chunks source -> transforms -> sinks.

Items run one after the other, or in `jobs` worker processes. All outputs are staged and renamed
into place only when every item has succeeded (see staging.py).
"""
import logging
import multiprocessing
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import PipelineError
from .model import Bounds, Item, union_bounds
from .progress import Progress
from .staging import Staging, file_digest

log = logging.getLogger(__name__)


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
    """What a run will do: the items, and for each item the final path of every sink's output."""

    items: list
    targets: dict  # item index -> [(sink label, final path), ...]

    def all_targets(self):
        return [Path(path) for pairs in self.targets.values() for _, path in pairs]


@dataclass
class ItemResult:
    item: Item
    points_in: int = 0
    points_out: int = 0
    bounds_in: Optional[Bounds] = None
    bounds_out: Optional[Bounds] = None
    applied: tuple = ()
    outputs: list = field(default_factory=list)  # {"sink", "path", "size", "sha256"}
    seconds: float = 0.0


def make_plan(stages: Stages) -> Plan:
    """Lists the source's items and checks that no two outputs collide and no input is overwritten."""
    items = stages.source.items()
    targets, owners = {}, {}
    inputs = {Path(p).resolve() for p in stages.source.inputs(items)}
    for item in items:
        pairs = []
        for sink in stages.sinks:
            for path in sink.targets(item):
                resolved = Path(path).resolve()
                if resolved in inputs:
                    raise PipelineError(f"{sink.label}: output {path} is an input file of this run; "
                                        "choose another path")
                if resolved in owners:
                    other_sink, other_item = owners[resolved]
                    raise PipelineError(f"{sink.label}: items {other_item.name!r} and {item.name!r} would both write "
                                        f"{path}{' (also written by ' + other_sink + ')' if other_sink != sink.label else ''}; "
                                        "add {id} or {index} to the path template")
                owners[resolved] = (sink.label, item)
                pairs.append((sink.label, str(path)))
        targets[item.index] = pairs
    return Plan(items, targets)


def _counted(chunks, result, side):
    """Passes chunks through while counting points and growing bounds on one side of the transforms."""
    for chunk in chunks:
        if side == "in":
            result.points_in += len(chunk)
            result.bounds_in = union_bounds(result.bounds_in, Bounds.of(chunk))
        else:
            result.points_out += len(chunk)
            result.bounds_out = union_bounds(result.bounds_out, Bounds.of(chunk))
        yield chunk


def _whole_cloud(chunks, function, label, item, info):
    import numpy as np

    if info.point_count:
        megabytes = info.point_count * info.dtype.itemsize / 1e6
        log.warning("%s holds the whole of %s in memory: about %.1f MB", label, item.name, megabytes)
    parts = list(chunks)
    yield function(np.concatenate(parts) if parts else np.zeros(0, info.dtype))


def process_item(stages: Stages, item: Item, staging: Staging, on_points=lambda n: None) -> ItemResult:
    """Streams one item through every transform into every sink; the staged files are left for the caller."""
    started = time.perf_counter()
    result = ItemResult(item)
    writers = []
    try:
        with stages.source.read(item) as stream:
            info = stream.info
            chunks = _counted(stream.chunks, result, "in")
            for transform in stages.transforms:
                info, function = transform.start(item, info)
                chunks = (_whole_cloud(chunks, function, transform.label, item, info) if transform.whole_cloud
                          else map(function, chunks))
            chunks = _counted(chunks, result, "out")
            for sink in stages.sinks:
                writers.append(sink.open(item, info, staging))
            for chunk in chunks:
                for writer in writers:
                    writer.write(chunk)
                on_points(len(chunk))
            for writer in writers:
                writer.close()
            writers = []
            result.applied = info.applied
    finally:
        for writer in writers:
            writer.abort()
    result.seconds = time.perf_counter() - started
    return result


def _describe_outputs(plan, result, staging):
    for sink_label, path in plan.targets[result.item.index]:
        size, digest = file_digest(staging.temporary(path))
        result.outputs.append({"sink": sink_label, "path": path, "size": size, "sha256": digest})
    return result


class Runner:
    def __init__(self, config, registry, jobs=1, progress: Optional[Progress] = None):
        self.config = config
        self.registry = registry
        self.jobs = max(1, jobs)
        self.progress = progress or Progress()
        self.stages = Stages.build(config, registry)

    def plan(self) -> Plan:
        return make_plan(self.stages)

    def run(self, plan: Plan) -> list:
        """Processes every item; on success renames all outputs into place, on any failure removes them."""
        staging = Staging()
        total_points = sum(i.point_count for i in plan.items) if all(i.point_count is not None for i in plan.items) else None
        self.progress.start(len(plan.items), total_points)
        try:
            if self.jobs == 1 or len(plan.items) <= 1:
                results = self._run_here(plan, staging)
            else:
                results = self._run_in_workers(plan, staging)
            staging.commit(plan.all_targets())
        except BaseException:
            staging.discard(plan.all_targets())
            raise
        finally:
            self.progress.finish()
        return sorted(results, key=lambda r: r.item.index)

    def _run_here(self, plan, staging):
        results = []
        for item in plan.items:
            result = process_item(self.stages, item, staging, self.progress.advance)
            results.append(_describe_outputs(plan, result, staging))
            self.progress.item_done()
        return results

    def _run_in_workers(self, plan, staging):
        context = multiprocessing.get_context("fork")
        queue = context.SimpleQueue()
        results = []
        pool = context.Pool(min(self.jobs, len(plan.items)), initializer=_worker_init,
                            initargs=(self.stages, staging, plan, queue))
        try:
            pending = pool.imap_unordered(_worker_run, plan.items)
            while len(results) < len(plan.items):
                try:
                    results.append(pending.next(timeout=0.2))
                    self.progress.item_done()
                except multiprocessing.TimeoutError:
                    pass
                while not queue.empty():
                    self.progress.advance(queue.get())
            pool.close()
        finally:
            pool.terminate()
            pool.join()
        return results


_worker = {}


def _worker_init(stages, staging, plan, queue):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _worker.update(stages=stages, staging=staging, plan=plan, queue=queue)


def _worker_run(item):
    result = process_item(_worker["stages"], item, _worker["staging"], _worker["queue"].put)
    return _describe_outputs(_worker["plan"], result, _worker["staging"])


def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
