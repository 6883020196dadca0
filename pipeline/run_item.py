"""The per-item work, a function of (plan, task) that runs wherever an executor sends it: the one loop that
streams an item's chunks from the source through every transform into every sink.

The loop runs on two threads: a compute thread reads the chunks, passes them through the transforms and has
every writer prepare them (numpy, file reads and compressors release the GIL), while this thread writes the
previous ones. The staged files are left for the caller, who commits or discards the whole run.
"""
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field, replace
from typing import Optional

from .background import ahead
from .chunk import Chunk
from .errors import PipelineError, SinkError, StageError
from .memory import keep_freed_memory
from .model import Bounds, Item, union_bounds
from .plan import Plan, is_merging
from .stage import Writer
from .staging import file_digest

log = logging.getLogger(__name__)

COMPUTE_AHEAD = 1  # chunks prepared ahead of the one being written


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
    described: dict = field(default_factory=dict)  # staged path -> what the report adds (Writer.described)
    stage_points: dict = field(default_factory=dict)  # transform label -> points it yielded
    gathered: dict = field(default_factory=dict)  # gathering sink label -> what its writer kept (Writer.gathered)
    seconds: float = 0.0


@dataclass
class TaskResult:
    items: list  # ItemResult, one per item of the task
    merged: list = field(default_factory=list)  # what the report says of the files of merging sinks


def transformed(plan: Plan, item: Item, info, chunks, opened=None, counts=None):
    """The stream info after every transform, and the chunks passed through them (lazily), planned from
    what each transform declares: a whole-cloud stage gets one chunk of every point and what it yields is
    cut back to the chunk size; every chunk a stage yields must have the attributes it declared. Each
    transform's stream goes into `opened`, so that the caller can close them (see close_streams), and the
    points each yields are counted in `counts` (transform label -> points)."""
    chunk_size = plan.stages.source.options["chunk_size"]
    opened = [] if opened is None else opened
    for transform, decision in zip(plan.stages.transforms, plan.transform_decisions(item)):
        before = info
        info, function = transform.start(item, info, decision)
        if transform.drops_points:
            info = replace(info, point_count=None)
        if transform.whole_cloud or transform.reach() is not None:
            chunks = _cut(function(iter([_whole(chunks, transform, item, before)])), chunk_size)
        else:
            chunks = function(chunks)
        opened.append(chunks)
        counts = {} if counts is None else counts
        counts[transform.label] = 0  # in the transforms' order
        chunks = _declared(chunks, transform, info.dtype, counts)
    return info, chunks


def close_streams(opened):
    """Closes the transforms' streams, the last first, so that a stage's generator runs its `finally` (its
    temporary files removed) now, not when the garbage collector finds it, should the run stop early."""
    for stream in reversed(opened):
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _whole(chunks, transform, item, info):
    if info.point_count:
        megabytes = info.point_count * info.dtype.itemsize / 1e6
        log.warning("%s holds the whole of %s in memory: about %.1f MB", transform.label, item.name, megabytes)
    return Chunk.joined(chunks, info.dtype)


def _cut(chunks, size):
    for chunk in chunks:
        yield from chunk.pieces(size)


def _declared(chunks, transform, dtype, counts):
    for chunk in chunks:
        if chunk.dtype != dtype:
            raise StageError(f"{transform.label}: yielded a chunk with attributes {_listed(chunk.dtype)} but declared "
                             f"{_listed(dtype)}")
        counts[transform.label] += len(chunk)
        yield chunk


def _listed(dtype):
    return ", ".join(f"{name} {dtype[name].str.lstrip('<>|=')}" for name in dtype.names)


def final_info(plan: Plan, item: Item):
    """What an item's stream will look like after every transform, without reading its points."""
    with plan.stages.source.read(item, plan.source_decision(item)) as stream:
        info, _ = transformed(plan, item, stream.info, stream.chunks)
    return info


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
    """A sink's writer, with its OS errors reported by sink_errors; `dtype`, when given, is the attributes it
    takes (a merging writer: each item's chunks are conformed to them)."""

    def __init__(self, writer, sink, item, dtype=None):
        self.writer, self.sink, self.item, self.dtype = writer, sink, item, dtype

    def start_item(self, item):
        self.writer.start_item(item)

    def prepare(self, chunk):
        with sink_errors(self.sink, self.item):
            return self.writer.prepare(chunk if self.dtype is None else chunk.conformed(self.dtype))

    def write(self, prepared):
        with sink_errors(self.sink, self.item):
            self.writer.write(prepared)

    def close(self):
        with sink_errors(self.sink, self.item):
            self.writer.close()

    def abort(self):
        self.writer.abort()

    def checksums(self):
        return self.writer.checksums()

    def described(self):
        return self.writer.described()

    def gathered(self):
        return self.writer.gathered()


def open_writer(sink, item, info, staging, merged=False):
    with sink_errors(sink, item):
        writer = sink.open(item, info, staging)
    return GuardedWriter(writer, sink, item, info.dtype if merged else None)


def process_item(plan: Plan, item: Item, staging, on_points=lambda n: None, shared=()) -> ItemResult:
    """Streams one item through every transform into every sink: the one loop. `shared` holds the writers
    of merging sinks: they receive the chunks too but stay open for other items. A gathering sink's writer
    is opened for the item like any other, and what it kept goes back in the result."""
    keep_freed_memory()
    started = time.perf_counter()
    result = ItemResult(item)
    writers, opened = [], []
    try:
        with plan.stages.source.read(item, plan.source_decision(item)) as stream, \
                contextlib.ExitStack() as streams:
            streams.callback(close_streams, opened)  # after the compute thread stopped, before the source closes
            log.debug("item %d: reading %s", item.index, item.name)
            info, chunks = transformed(plan, item, stream.info, _counted_in(stream.chunks, result, on_points),
                                       opened, result.stage_points)
            for sink in plan.stages.sinks:
                if not is_merging(sink):
                    writers.append(open_writer(sink, item, info, staging))
            every = [*writers, *shared]
            for writer in shared:
                writer.start_item(item)

            def prepared(chunk):
                return len(chunk), Bounds.of(chunk), [writer.prepare(chunk) for writer in every]

            # closed (the compute thread stopped) before the source is, and before any writer is aborted
            with contextlib.closing(ahead(map(prepared, chunks), COMPUTE_AHEAD, name="compute")) as work:
                for count, bounds, done in work:
                    result.points_out += count
                    result.bounds_out = union_bounds(result.bounds_out, bounds)
                    for writer, one in zip(every, done):
                        writer.write(one)
            _close(writers, result.checksums, result.described)
            result.gathered = {writer.sink.label: writer.gathered() for writer in writers if writer.sink.gathers}
            writers = []
            result.applied = info.applied
    finally:
        for writer in writers:
            writer.abort()
    result.seconds = time.perf_counter() - started
    return result


def _counted_in(chunks, result, on_points):
    for chunk in chunks:
        result.points_in += len(chunk)
        result.bounds_in = union_bounds(result.bounds_in, Bounds.of(chunk))
        on_points(len(chunk))
        yield chunk


def _close(writers, checksums, described):
    """Closes writers, collecting the checksums they computed while writing and what they say of their files."""
    for writer in writers:
        writer.close()
        checksums.update(writer.checksums())
        described.update(writer.described())


def output_record(staging, sink_label, path, known, described):
    """What the report says of one staged output: its sink, final path, size, when the run reports checksums
    its sha256 (from `known` when its writer computed it, else read back from the file), and what its writer
    said of it (`described`)."""
    temporary = staging.temporary(path)
    record = {"sink": sink_label, "path": path, **described.get(str(temporary), {})}
    if not staging.checksums:
        return {**record, "size": os.path.getsize(temporary)}
    size, digest = known.get(str(temporary)) or file_digest(temporary)
    return {**record, "size": size, "sha256": digest}


def describe_outputs(plan, result, staging):
    """Fills in what the report says of an item's outputs (reading back the files whose writer did not hash)."""
    result.outputs += [output_record(staging, label, path, result.checksums, result.described)
                       for label, path in plan.targets[result.item.index]]
    return result


def run_task(plan: Plan, task, staging, on_points=lambda n: None, on_item=lambda result: None) -> TaskResult:
    """Runs the items of one task (see Plan.tasks); `on_item` is called with each item's result as it is done
    (its outputs not yet described: see describe_outputs)."""
    items = plan.task_items(task)
    if not plan.merged:
        results = []
        for item in items:
            results.append(process_item(plan, item, staging, on_points))
            on_item(results[-1])
        return TaskResult(results)
    return _run_merging(plan, items, staging, on_points, on_item)


def _run_merging(plan, items, staging, on_points, on_item):
    """Items one after another into the writers of the merging sinks, opened once for all of them, each
    sink saying how one file for several items is opened (Sink.merged_info)."""
    infos = [final_info(plan, item) for item in items]
    item = Item(id="merged", name="merged", index=-1, location="merged items", fields=items[0].fields)
    bounds = None
    shared, checksums, described, results = [], {}, {}, []
    try:
        for sink in filter(is_merging, plan.stages.sinks):
            info = sink.merged_info(items, infos)
            if info.bounds is None:
                if bounds is None:
                    log.info("merge: some inputs have no bounds in their header; reading them once to choose the "
                             "offset")
                    bounds = _measure_bounds(plan, items)
                info = replace(info, bounds=bounds)
            shared.append(open_writer(sink, item, info, staging, merged=True))
        for one in items:
            results.append(process_item(plan, one, staging, on_points, shared))
            on_item(results[-1])
        _close(shared, checksums, described)
        shared = []
    finally:
        for writer in shared:
            writer.abort()
    return TaskResult(results, [output_record(staging, label, path, checksums, described)
                                for label, path in plan.merged])


def _measure_bounds(plan, items):
    """The union of the transformed bounds of these items, by reading them through the transforms."""
    bounds = None
    for item in items:
        with plan.stages.source.read(item, plan.source_decision(item)) as stream:
            _, chunks = transformed(plan, item, stream.info, stream.chunks)
            for chunk in chunks:
                bounds = union_bounds(bounds, Bounds.of(chunk))
    return bounds
