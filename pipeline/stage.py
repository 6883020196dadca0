"""What a source, a transform and a sink must provide.

A stage class declares its options; the config validates them before any I/O and the runner builds
the stage with the converted values. A stage is its options: a worker process rebuilds it from them, so it
keeps no per-run or per-item state on `self`. What it decides for the run comes from `prepare` as plain
data that the plan carries; per-item state lives in what `read`, `open` and `start` return.
"""
from pathlib import Path
from typing import Callable, ClassVar, ContextManager, Iterable, Iterator, Mapping, Optional

from .chunk import Chunk
from .model import Item, PointStream, StreamInfo, merge_infos
from .options import Option, integer


class Stage:
    kind: ClassVar[str] = ""
    options: ClassVar[tuple] = ()

    def __init__(self, options: Mapping, label: str = ""):
        self.options = dict(options)
        self.label = label or type(self).__name__

    def __reduce__(self):  # a stage is its options: a worker process rebuilds it from them, nothing else
        return type(self), (self.options, self.label)

    @classmethod
    def check(cls, options: dict) -> None:
        """Checks that involve several options; raise OptionError(message, option)."""

    @classmethod
    def missing_inputs(cls, options: dict) -> list:
        """The input files the options name that are not there (a glob matching nothing), as OptionErrors
        naming the option and the list element, so that `pipeline validate` reports them; no point is read."""
        return []

    @classmethod
    def summary(cls):
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def option(cls, name) -> Option:
        return next(o for o in cls.options if o.name == name)

    def prepare(self, items: list) -> Mapping:
        """Called once with every item of the run, in the process that plans it, before any point is read: to
        decide something for the whole run or to refuse an item early (raise StageError to stop the run).
        Returns {item index: decision}: plain data that pickles, which the plan carries to wherever the item
        is processed. Nothing is kept on the stage."""
        return {}


class Source(Stage):
    kind = "source"
    # 65,536 points: chunks that stay in the processor's cache (1,000,000 took 1.2-1.5x the time and 3-6x the memory)
    options = (Option("chunk_size", integer(minimum=1), "points per chunk", default=65_536),)
    template_fields: ClassVar[tuple] = ("name", "id", "index")

    @classmethod
    def template_fields_for(cls, options) -> tuple:
        """The path-template fields this source's items provide with these options."""
        return cls.template_fields

    def items(self) -> list:
        """The items this source will read, in order, without reading their points."""
        raise NotImplementedError

    def read(self, item: Item, decision=None) -> ContextManager[PointStream]:
        """Opens one item (with what `prepare` decided for it); the stream yields chunks (pipeline.chunk.Chunk)
        of at most `chunk_size` points."""
        raise NotImplementedError

    def inputs(self, items: Iterable[Item]) -> list:
        """Local files the source reads, so that no sink overwrites one."""
        return []

    def prefetch(self, items: list, decisions: Mapping) -> None:
        """Called before items are read one after another in this process: a source may start fetching
        them in the background (a download), so that reading one overlaps fetching the next."""

    def close(self) -> None:
        """Releases what the source holds (threads, connections) at the end of a run."""


Chunks = Iterator[Chunk]
StreamFunction = Callable[[Chunks], Chunks]


def each(function: Callable[[Chunk], Chunk]) -> StreamFunction:
    """The stream function of a transform that maps every chunk to one chunk."""
    return lambda chunks: map(function, chunks)


class Transform(Stage):
    """Maps an item's stream of chunks to a stream of chunks.

    What it does is declared, and the runner plans from the declarations before any point flows: the flags
    below, and the stream info that `start` returns, whose dtype lists every attribute of the chunks it
    yields, with their types (a chunk that differs is an error naming the stage).
    """

    kind = "transform"
    moves_points: ClassVar[bool] = False  # changes x, y, z
    drops_points: ClassVar[bool] = False  # may yield fewer points than it receives
    whole_cloud: ClassVar[bool] = False  # needs every point of an item at once (one chunk of them all)

    def reach(self) -> Optional[float]:
        """The distance within which the stage needs a point's neighbours, or None. The runner then gives it
        the whole cloud, and warns with the memory it takes."""
        return None

    def start(self, item: Item, info: StreamInfo, decision=None) -> "tuple[StreamInfo, StreamFunction]":
        """Prepares one item (with its decision from `prepare`, if any): returns the stream info after this
        stage and its stream function, which may keep state across chunks and yield more at the end.

        Chunks are never changed in place: the function yields new ones (see pipeline.chunk).
        """
        raise NotImplementedError


class Writer:
    """What `Sink.open` returns: receives every chunk of one item, then `close` or `abort`.

    Each chunk goes to `prepare`, which must not touch the file, in a compute thread, and what it returned
    to `write` in the runner's thread, chunk after chunk in order; the next chunk may be prepared while the
    previous one is written.
    """

    def start_item(self, item: Item) -> None:
        """A writer of a `merge: true` sink is told when the chunks of another item start."""

    def prepare(self, chunk: Chunk):
        return chunk

    def write(self, prepared) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Completes the staged files (the runner renames them when the whole run succeeds)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Releases resources after a failure; the runner deletes the staged files."""

    def described(self) -> dict:
        """After `close`: {staged path: {key: value}}, what the run report says of a file besides its size
        and checksum (for LAS, the coordinate system it declares)."""
        return {}

    def checksums(self) -> dict:
        """After `close`: {staged path: (size, sha256)} of the files whose checksum this writer computed
        while writing them, so that the runner need not read them again for the report."""
        return {}

    def gathered(self):
        """After `close`, for a gathering sink (Sink.gathers): what it kept of the item, plain data that pickles
        (it comes back from a worker process or a Dask worker to the process that ends the run)."""
        return None


class Sink(Stage):
    kind = "sink"
    # A gathering sink writes no file per item: its writer keeps something small of each item (Writer.gathered),
    # wherever the item runs, and `finish` makes its files from all of them once, in the process that ends the run.
    gathers: ClassVar[bool] = False

    def targets(self, item: Item) -> list:
        """The final paths this sink would write for an item (by default, its `path` template filled in)."""
        return [Path(self.options["path"].format(**item.template_values()))]

    def open(self, item: Item, info: StreamInfo, staging) -> Writer:
        """Starts writing one item; files are created through `staging.create(final_path)`."""
        raise NotImplementedError

    def merged_info(self, items: list, infos: list) -> StreamInfo:
        """How one file that receives several items (`merge: true`) is opened: the stream info `open` gets,
        from each item's (raise a PipelineError naming the items when they cannot share a file). By default, every attribute of any of them and the union of their bounds; a sink
        adds what its format keeps (see model.merge_infos)."""
        return merge_infos(infos)

    def outputs(self) -> list:
        """A gathering sink: the final paths of the files `finish` writes, claimed when the run is planned."""
        return []

    def finish(self, gathered: list, staging) -> dict:
        """A gathering sink, once every item has succeeded: `gathered` is [(item, what its writer gathered)] in item
        order. Writes its files through `staging.create(final path)` (they are renamed into place with every other
        output) and returns {final path: what the run report says of that file}. A PipelineError here fails the
        run before any output is in place."""
        raise NotImplementedError
