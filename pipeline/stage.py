"""What a source, a transform and a sink must provide.

A stage class declares its options; the config validates them before any I/O and the runner builds
the stage with the converted values. Stages are built once per process and must keep no per-item
state on `self`: per-item state lives in what `read`, `open` and `start` return.
"""
from pathlib import Path
from typing import ClassVar, ContextManager, Iterable, Mapping

from .model import ChunkFunction, Item, PointStream, StreamInfo
from .options import Option, integer


class Stage:
    kind: ClassVar[str] = ""
    options: ClassVar[tuple] = ()
    # a stage that needs every point of an item at once says so; the runner then warns with the memory
    whole_cloud: ClassVar[bool] = False

    def __init__(self, options: Mapping, label: str = ""):
        self.options = dict(options)
        self.label = label or type(self).__name__

    @classmethod
    def check(cls, options: dict) -> None:
        """Checks that involve several options; raise OptionError(message, option)."""

    @classmethod
    def summary(cls):
        return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""

    @classmethod
    def option(cls, name) -> Option:
        return next(o for o in cls.options if o.name == name)


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

    def read(self, item: Item) -> ContextManager[PointStream]:
        """Opens one item; the stream yields chunks of at most `chunk_size` points."""
        raise NotImplementedError

    def inputs(self, items: Iterable[Item]) -> list:
        """Local files the source reads, so that no sink overwrites one."""
        return []

    def prefetch(self, items: list) -> None:
        """Called before items are read one after another in this process: a source may start fetching
        them in the background (a download), so that reading one overlaps fetching the next."""

    def close(self) -> None:
        """Releases what the source holds (threads, connections) at the end of a run."""


class Transform(Stage):
    kind = "transform"
    # True when the chunk function only changes x, y and z, keeps every point, and also takes a
    # model.Coordinates (x, y, z alone): the runner may then move a reader's raw records (PointStream.raw)
    coordinates_only: ClassVar[bool] = False

    def prepare(self, items: list) -> Mapping:
        """Called once with every item of the run before any point is read, to decide something for the
        whole run or to refuse an item early (raise StageError to stop the run). Returns {item index:
        decision}: plain data that pickles, which the plan carries to wherever the item is processed and
        `start` receives. Nothing is kept on the stage."""
        return {}

    def start(self, item: Item, info: StreamInfo, decision=None) -> "tuple[StreamInfo, ChunkFunction]":
        """Prepares one item (with its decision from `prepare`, if any): returns the stream info after this
        stage and the chunk function.

        The function returns a new chunk and never changes its argument in place.
        """
        raise NotImplementedError


class Writer:
    """What `Sink.open` returns: receives every chunk of one item, then `close` or `abort`."""

    def write(self, chunk) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Completes the staged files (the runner renames them when the whole run succeeds)."""
        raise NotImplementedError

    def abort(self) -> None:
        """Releases resources after a failure; the runner deletes the staged files."""

    def checksums(self) -> dict:
        """After `close`: {staged path: (size, sha256)} of the files whose checksum this writer computed
        while writing them, so that the runner need not read them again for the report."""
        return {}

    # The fast path (see Sink.open_raw) hands each block of raw records to `prepare_raw` in a compute
    # thread, then what it returned to `write_raw` in the runner's thread, both in block order; the next
    # block may be prepared while this one is written. `block` is the writer's own to change.
    def prepare_raw(self, block, xyz):
        raise NotImplementedError

    def write_raw(self, prepared) -> None:
        raise NotImplementedError


class Sink(Stage):
    kind = "sink"

    def targets(self, item: Item) -> list:
        """The final paths this sink would write for an item (by default, its `path` template filled in)."""
        return [Path(self.options["path"].format(**item.template_values()))]

    def open(self, item: Item, info: StreamInfo, staging) -> Writer:
        """Starts writing one item; files are created through `staging.create(final_path)`."""
        raise NotImplementedError

    def open_raw(self, item: Item, info: StreamInfo, raw, staging):
        """A writer that takes a reader's raw records and their moved coordinates (a model.Coordinates)
        through `prepare_raw` and `write_raw`, when this sink can write them without building chunks;
        else None."""
        return None
