"""Builds the stages of a config and streams every item's chunks source -> transforms -> sinks.

Items run one after the other, or in `jobs` worker processes. All outputs are staged and renamed
into place only when every item has succeeded (see staging.py).
"""
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

from .background import ahead, signals_deferred
from .errors import PipelineError, SinkError
from .memory import keep_freed_memory
from .model import Bounds, Item, copy_records, union_bounds
from .progress import Progress
from .stage import Writer
from .staging import Staging, file_digest, sweep

log = logging.getLogger(__name__)

COMPUTE_AHEAD = 1  # fast path: blocks prepared ahead of the one being written


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
    """What a run will do: the items, for each item the final path of every sink's output, and the
    files of `merge: true` sinks, which receive every item."""

    items: list
    targets: dict  # item index -> [(sink label, final path), ...]
    merged: list = field(default_factory=list)  # [(sink label, final path), ...]
    report: Optional[Path] = None  # the run report's file (--report), committed with the outputs
    # what each transform decided for the run in `prepare`, as plain data: {item index: decision}, in stage order
    decisions: tuple = ()

    def all_targets(self):
        outputs = [Path(path) for pairs in [*self.targets.values(), self.merged] for _, path in pairs]
        return outputs + ([self.report] if self.report else [])


@dataclass
class ItemResult:
    item: Item
    points_in: int = 0
    points_out: int = 0
    bounds_in: Optional[Bounds] = None
    bounds_out: Optional[Bounds] = None
    applied: tuple = ()
    outputs: list = field(default_factory=list)  # {"sink", "path", "size", "sha256"}
    checksums: dict = field(default_factory=dict)  # staged path -> (size, sha256), from writers that hashed
    seconds: float = 0.0


def is_merging(sink):
    return bool(sink.options.get("merge"))


def file_identity(path):
    """What tells one file from another whatever its name (device and inode: a hard link is the same
    file), or None when there is no such file."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def make_plan(stages: Stages, inputs=(), report=None) -> Plan:
    """Lists the source's items and checks that no two outputs collide and no input is overwritten
    (the source's files and `inputs`, e.g. the config; by path and by identity, so a hard link of an
    input is refused too). `report` is the run report's path, claimed like an output."""
    items = stages.source.items()
    targets, owners = {}, {}
    inputs = [*stages.source.inputs(items), *inputs]
    input_paths = {Path(p).resolve() for p in inputs}
    input_files = {identity for identity in map(file_identity, inputs) if identity}

    def claim(sink_label, path, item):
        resolved = Path(path).resolve()
        if resolved.is_dir():
            raise PipelineError(f"{sink_label}: output {path} is a folder; choose a file name")
        if resolved in input_paths or file_identity(resolved) in input_files:
            raise PipelineError(f"{sink_label}: output {path} is an input file of this run; choose another path")
        if resolved in owners:
            other_sink, other_item = owners[resolved]
            if item is None:  # the report
                raise PipelineError(f"--report {report}: {other_sink} writes that file; choose another path for "
                                    "the report")
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
    for item in items:
        targets[item.index] = [claim(sink.label, path, item) for sink in stages.sinks if not is_merging(sink)
                               for path in sink.targets(item)]
    if report is not None:
        claim(f"--report {report}", report, None)
    return Plan(items, targets, merged, Path(report) if report is not None else None)


def final_info(stages: Stages, item: Item, decisions):
    """What an item's stream will look like after every transform, without reading its points."""
    with stages.source.read(item) as stream:
        info, _ = transformed(stages, item, stream.info, stream.chunks, decisions)
    return info


def merged_info(infos):
    """One stream description for several items: every field of any of them, and the union of their bounds."""
    import numpy as np

    fields = {}
    for info in infos:
        for name in info.dtype.names:
            kind = info.dtype[name]
            if name in fields and fields[name] != kind:
                if fields[name].shape != kind.shape:
                    raise PipelineError(f"merge: field {name!r} has shapes {fields[name].shape} and {kind.shape}")
                kind = np.dtype((np.result_type(fields[name].base, kind.base), kind.shape))
            fields[name] = kind
    bounds = None
    if all(info.bounds is not None for info in infos):
        for info in infos:
            bounds = union_bounds(bounds, info.bounds)
    facts = {}
    las = [info.format_facts.get("las") for info in infos]
    if all(las):
        # the first item's header is the model (VLRs, version); the finest scale of any item is kept, and the
        # offset is chosen from the union of the bounds (`merged`), since items may lie far apart
        import copy

        header = copy.deepcopy(las[0]["header"])
        header.scales = np.min([f["header"].scales for f in las], axis=0)
        facts = {"las": {**las[0], "header": header, "merged": True}}
        if len({(f["header"].point_format.id, tuple(f["header"].scales)) for f in las}) > 1:
            log.info("merge: the items have different LAS layouts; writing scale %s", header.scales.tolist())
    if "created" in infos[0].format_facts:  # the first item's date
        facts["created"] = infos[0].format_facts["created"]
    counts = [info.point_count for info in infos]
    return replace(infos[0], dtype=np.dtype(list(fields.items())), bounds=bounds,
                   point_count=sum(counts) if None not in counts else None, format_facts=facts,
                   applied=tuple(step for info in infos for step in info.applied))


def conform(chunk, dtype):
    """A chunk with the fields of `dtype`: missing ones zero, others converted."""
    if chunk.dtype == dtype:
        return chunk
    import numpy as np

    out = np.zeros(len(chunk), dtype)
    for name in chunk.dtype.names:
        out[name] = chunk[name]
    return out


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


def started(stages: Stages, item: Item, info, decisions):
    """Starts every transform on an item, with what it decided for the item in `prepare` (Plan.decisions):
    the stream info after all of them, and for each transform (transform, its chunk function, the stream
    info after it)."""
    steps = []
    for transform, decided in zip(stages.transforms, decisions):
        info, function = transform.start(item, info, decided.get(item.index))
        steps.append((transform, function, info))
    return info, steps


def transformed(stages: Stages, item: Item, info, chunks, decisions):
    """The stream info after every transform, and the chunks passed through them (lazily)."""
    info, steps = started(stages, item, info, decisions)
    for transform, function, after in steps:
        chunks = (_whole_cloud(chunks, function, transform.label, item, after) if transform.whole_cloud
                  else map(function, chunks))
    return info, chunks


@contextlib.contextmanager
def sink_errors(sink, item):
    """A sink's OS errors (a full disk, a read-only folder, a file where a folder should be) as one line
    naming the sink, the item and the final file, never the staging name."""
    try:
        yield
    except PipelineError:
        raise
    except OSError as error:
        finals = ", ".join(map(str, sink.targets(item)))
        raise SinkError(f"{sink.label}: {item.name}: cannot write {finals}: {error.strerror or error}") from error


class GuardedWriter(Writer):
    """A sink's writer, with its OS errors reported by sink_errors."""

    def __init__(self, writer, sink, item):
        self.writer, self.sink, self.item = writer, sink, item

    def write(self, chunk):
        with sink_errors(self.sink, self.item):
            self.writer.write(chunk)

    def prepare_raw(self, block, xyz):
        with sink_errors(self.sink, self.item):
            return self.writer.prepare_raw(block, xyz)

    def write_raw(self, prepared):
        with sink_errors(self.sink, self.item):
            self.writer.write_raw(prepared)

    def close(self):
        with sink_errors(self.sink, self.item):
            self.writer.close()

    def abort(self):
        self.writer.abort()

    def checksums(self):
        return self.writer.checksums()


def open_writer(sink, item, opening):
    """`opening()` (a sink's open or open_raw), with its writer guarded; None stays None."""
    with sink_errors(sink, item):
        writer = opening()
    return None if writer is None else GuardedWriter(writer, sink, item)


def process_item(stages: Stages, decisions, item: Item, staging: Staging, on_points=lambda n: None, shared=(),
                 fast=True) -> ItemResult:
    """Streams one item through every transform into every sink; the staged files are left for the caller.

    `shared` holds (writer, dtype) of merging sinks: they receive the chunks but stay open for other items.
    """
    started = time.perf_counter()
    result = ItemResult(item)
    writers = []
    try:
        with stages.source.read(item) as stream:
            log.debug("item %d: reading %s", item.index, item.name)
            if fast and not shared and _process_raw(stages, decisions, item, stream, staging, result, on_points):
                result.seconds = time.perf_counter() - started
                return result
            info, chunks = transformed(stages, item, stream.info, _counted(stream.chunks, result, "in"), decisions)
            chunks = _counted(chunks, result, "out")
            for sink in stages.sinks:
                if not is_merging(sink):
                    writers.append(open_writer(sink, item, lambda: sink.open(item, info, staging)))
            for chunk in chunks:
                for writer in writers:
                    writer.write(chunk)
                for writer, dtype in shared:
                    writer.write(conform(chunk, dtype))
                on_points(len(chunk))
            _close(writers, result.checksums)
            writers = []
            result.applied = info.applied
    finally:
        for writer in writers:
            writer.abort()
    result.seconds = time.perf_counter() - started
    return result


def _process_raw(stages, decisions, item, stream, staging, result, on_points):
    """The fast path: a reader's raw records go to sinks that write them as they are, with only their
    coordinates moved (computed exactly as on the plain path, from their x, y, z as model.Coordinates).
    A background thread moves the blocks and has the sinks prepare them (numpy releases the GIL), while
    this thread writes the previous ones.
    False when the reader, a transform or a sink cannot take part; nothing is then read."""
    raw = stream.raw
    if raw is None or not all(t.coordinates_only and not t.whole_cloud for t in stages.transforms):
        return False
    info, steps = started(stages, item, stream.info, decisions)
    writers = []

    def prepared(block):
        xyz = moved = raw.xyz(block)
        for _, function, _ in steps:
            moved = function(moved)
        own = [block] + [copy_records(block) for _ in writers[1:]]  # each writer may change its block
        work = [writer.prepare_raw(mine, moved) for writer, mine in zip(writers, own)]
        return len(block), Bounds.of(xyz), Bounds.of(moved), work

    blocks = None
    try:
        for sink in stages.sinks:
            writer = open_writer(sink, item, lambda: sink.open_raw(item, info, raw, staging))
            if writer is None:
                return False
            writers.append(writer)
        # held at once: the block being written, COMPUTE_AHEAD prepared, and the one being prepared
        blocks = ahead(map(prepared, raw.blocks(held=COMPUTE_AHEAD + 2)), COMPUTE_AHEAD, name="prepare-blocks")
        for count, bounds_in, bounds_out, work in blocks:
            result.points_in += count
            result.points_out += count
            result.bounds_in = union_bounds(result.bounds_in, bounds_in)
            result.bounds_out = union_bounds(result.bounds_out, bounds_out)
            for writer, done in zip(writers, work):
                writer.write_raw(done)
            on_points(count)
        _close(writers, result.checksums)
        writers = []
        result.applied = info.applied
        return True
    finally:
        if blocks is not None:
            blocks.close()  # stops the compute thread before the writers it feeds are aborted
        for writer in writers:
            writer.abort()


def _close(writers, checksums):
    """Closes writers, collecting the checksums they computed while writing."""
    for writer in writers:
        writer.close()
        checksums.update(writer.checksums())


def _output_record(staging, sink_label, path, known):
    """What the report says of one staged output: its sink, final path, size and, when the run reports
    checksums, its sha256 (from `known` when its writer computed it, else read back from the file)."""
    temporary = staging.temporary(path)
    if not staging.checksums:
        return {"sink": sink_label, "path": path, "size": os.path.getsize(temporary)}
    size, digest = known.get(str(temporary)) or file_digest(temporary)
    return {"sink": sink_label, "path": path, "size": size, "sha256": digest}


def _describe_outputs(plan, result, staging):
    result.outputs += [_output_record(staging, label, path, result.checksums)
                       for label, path in plan.targets[result.item.index]]
    return result


class Runner:
    def __init__(self, config, registry, jobs=1, progress: Optional[Progress] = None, fast_path=True,
                 checksums=True):
        self.fast_path = fast_path  # False forces the plain chunk path (tests compare the two)
        self.checksums = checksums  # the sha256 of every output, for the report
        self.config = config
        self.registry = registry
        self.jobs = max(1, jobs)
        self.progress = progress or Progress()
        self.stages = Stages.build(config, registry)
        self.merged_outputs = []

    def plan(self, report=None) -> Plan:
        """The run's items and outputs; `report` is the path of the run report, if it goes to a file."""
        plan = make_plan(self.stages, self.config_inputs(), report)
        return replace(plan, decisions=tuple(dict(t.prepare(plan.items) or {}) for t in self.stages.transforms))

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

    def run(self, plan: Plan, report=None, on_commit=lambda: None) -> list:
        """Processes every item; on success renames all outputs into place, on any failure removes them.

        `report(results)` gives the text of the run report when the plan has a report file: it is staged
        and committed with the outputs, so a report that cannot be written leaves no output either.
        `on_commit()` is called when the outputs are about to be renamed into place (the CLI then stops
        taking Ctrl-C for an interruption)."""
        keep_freed_memory()
        staging = Staging(checksums=self.checksums)
        sweep({Path(path).parent for path in plan.all_targets()})
        total_points = sum(i.point_count for i in plan.items) if all(i.point_count is not None for i in plan.items) else None
        self.progress.start(len(plan.items), total_points)
        try:
            if plan.merged or self.jobs == 1 or len(plan.items) <= 1:
                self.stages.source.prefetch(plan.items)
            if plan.merged:
                results = self._run_merging(plan, staging)
            elif self.jobs == 1 or len(plan.items) <= 1:
                results = self._run_here(plan, staging)
            else:
                results = self._run_in_workers(plan, staging)
            results.sort(key=lambda r: r.item.index)
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

    def _run_here(self, plan, staging, shared=()):
        """Items one after another; each item's outputs are read back for their checksums in a thread
        while the next item runs (hashlib releases the GIL)."""
        described = []
        with ThreadPoolExecutor(1, thread_name_prefix="checksums") as checksums:
            for item in plan.items:
                result = process_item(self.stages, plan.decisions, item, staging, self.progress.advance, shared,
                                      self.fast_path)
                described.append(checksums.submit(_describe_outputs, plan, result, staging))
                self.progress.item_done()
            return [future.result() for future in described]

    def _run_merging(self, plan, staging):
        """Items one after another (one file receives them all), into writers opened once for the run."""
        if self.jobs > 1:
            log.info("a sink merges every item into one file: items are processed one after another")
        info = merged_info([final_info(self.stages, item, plan.decisions) for item in plan.items])
        if info.bounds is None:
            log.info("merge: some inputs have no bounds in their header; reading them once to choose the offset")
            info = replace(info, bounds=self._measure_bounds(plan))
        item = Item(id="merged", name="merged", index=-1, location="merged items",
                    fields=plan.items[0].fields)
        shared, checksums = [], {}
        try:
            for sink in filter(is_merging, self.stages.sinks):
                shared.append((open_writer(sink, item, lambda: sink.open(item, info, staging)), info.dtype))
            results = self._run_here(plan, staging, shared)
            _close([writer for writer, _ in shared], checksums)
            shared = []
        finally:
            for writer, _ in shared:
                writer.abort()
        self.merged_outputs = [_output_record(staging, label, path, checksums) for label, path in plan.merged]
        return results

    def _measure_bounds(self, plan):
        """The union of the transformed bounds of every item, by reading them through the transforms."""
        bounds = None
        for item in plan.items:
            result = ItemResult(item)
            with self.stages.source.read(item) as stream:
                _, chunks = transformed(self.stages, item, stream.info, stream.chunks, plan.decisions)
                for _ in _counted(chunks, result, "out"):
                    pass
            bounds = union_bounds(bounds, result.bounds_out)
        return bounds

    def _run_in_workers(self, plan, staging):
        # Workers are forked: a process forked after lazrs has run its thread pool hangs in that pool, which the
        # command line never does (its main process reads no LAZ points before the workers start)
        context = multiprocessing.get_context("fork")
        queue = context.SimpleQueue()
        results = []
        pool = None
        try:
            with signals_deferred():  # a worker forked with the main process's handler would raise on Ctrl-C
                pool = context.Pool(min(self.jobs, len(plan.items)), initializer=_worker_init,
                                    initargs=(self.stages, staging, plan, queue, self.fast_path, os.getpid()))
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
            if pool is not None:
                pool.terminate()
                pool.join()
        return results


def write_report(path, text, staging):
    try:
        staging.create(path).write_text(text, encoding="utf-8")
    except OSError as error:
        raise PipelineError(f"--report {path}: cannot write the report: {error.strerror or error}") from error


_worker = {}
PR_SET_PDEATHSIG = 1  # from linux/prctl.h


def die_with_parent(parent):
    """Has the kernel kill this worker when the process that started it dies (even by SIGKILL), so that
    no worker goes on writing for a run that is gone. Linux only; elsewhere workers end with their task."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def _worker_init(stages, staging, plan, queue, fast_path, parent):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the main process ends its workers with SIGTERM
    die_with_parent(parent)
    _worker.update(stages=stages, staging=staging, plan=plan, queue=queue, fast_path=fast_path)


def _worker_run(item):
    result = process_item(_worker["stages"], _worker["plan"].decisions, item, _worker["staging"], _worker["queue"].put,
                          fast=_worker["fast_path"])
    return _describe_outputs(_worker["plan"], result, _worker["staging"])


def cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
