"""Small stages for engine tests, registered through a Registry built from a dict."""
import logging
from contextlib import contextmanager

import numpy as np

from pipeline.chunk import Chunk
from pipeline.errors import StageError
from pipeline.model import Item, PointStream, StreamInfo
from pipeline.options import Option, integer, path, text
from pipeline.stage import Sink, Source, Transform, Writer, each

DTYPE = np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2")])


def points(item_index, count):
    chunk = np.zeros(count, DTYPE)
    chunk["x"] = 500_000 + np.arange(count) * 0.25
    chunk["y"] = 4_000_000 + item_index
    chunk["z"] = 50.125
    chunk["intensity"] = np.arange(count) % 65536
    return chunk


class CountingSource(Source):
    """Yields `items` items of `points` points each."""

    options = Source.options + (Option("items", integer(minimum=0), "how many items", default=2),
                                Option("points", integer(minimum=0), "points per item", default=10))

    def items(self):
        return [Item(id=f"i{n}", name=f"item{n}", index=n, location=f"memory:{n}", point_count=self.options["points"])
                for n in range(self.options["items"])]

    @contextmanager
    def read(self, item, decision=None):
        data = points(item.index, self.options["points"])
        size = self.options["chunk_size"]
        yield PointStream(StreamInfo(dtype=DTYPE, source_format="memory", point_count=len(data)),
                          (Chunk.of(data[i:i + size]) for i in range(0, len(data), size)))


class FailingTransform(Transform):
    """Raises on the given item (or KeyboardInterrupt when `error: interrupt`)."""

    options = (Option("item", integer(), "index of the item that fails", default=1),
               Option("error", text(), "stage | interrupt", default="stage"))

    def start(self, item, info, decision=None):
        def function(chunk):
            if item.index == self.options["item"]:
                if self.options["error"] == "interrupt":
                    raise KeyboardInterrupt
                raise StageError(f"{self.label}: boom on {item.name}")
            return chunk
        return info, each(function)


class WholeCloudTransform(Transform):
    """Records the size of the one chunk it is given."""

    options = ()
    whole_cloud = True

    def start(self, item, info, decision=None):
        def function(chunk):
            logging.getLogger("tests").info("whole cloud chunk of %d", len(chunk))
            return chunk.with_columns({"intensity": np.full(len(chunk), len(chunk), np.uint16)})
        return info, each(function)


class SlowTransform(Transform):
    """Sleeps `seconds` at every chunk of item `item`, after writing the id of its process to `marker`; an
    item whose marker exists already (a run of it again, after its worker was killed) is not slowed."""

    options = (Option("item", integer(), "index of the slow item", default=0),
               Option("seconds", text(), "seconds per chunk", default="0.5"),
               Option("marker", text(), "a file naming the process that runs the item", default="marker"))

    def start(self, item, info, decision=None):
        import os
        import time
        from pathlib import Path

        marker = Path(self.options["marker"])
        slow = item.index == self.options["item"] and not marker.exists()
        if slow:
            marker.write_text(str(os.getpid()))

        def function(chunk):
            if slow:
                time.sleep(float(self.options["seconds"]))
            return chunk
        return info, each(function)


class TidyTransform(Transform):
    """A stream function with a `finally`, as a stage with temporary files has: it logs when it runs."""

    options = ()

    def start(self, item, info, decision=None):
        def function(chunks):
            try:
                yield from chunks
            finally:
                logging.getLogger("tests").info("tidied %s", item.name)
        return info, function


class MislabelledTransform(Transform):
    """Adds a column that its stream info does not declare."""

    options = ()

    def start(self, item, info, decision=None):
        return info, each(lambda chunk: chunk.with_columns({"extra": np.zeros(len(chunk), np.float32)}))


class ChunkLengthsSink(Sink):
    """Logs the length of every chunk it receives."""

    options = (Option("path", text(), "unused", default="unused"),)

    def targets(self, item):
        return []

    def open(self, item, info, staging):
        class Lengths(Writer):
            def write(self, chunk):
                logging.getLogger("tests").info("chunk of %d", len(chunk))

            def close(self):
                pass
        return Lengths()


class TotalsSink(Sink):
    """A gathering sink: each item's writer keeps its point count and process id; `finish` writes them as one
    line per item to `path`, or fails with `fail: true`."""

    options = (Option("path", path(), "the totals file"),
               Option("fail", text(), "yes to fail at the end", default="no"))
    gathers = True

    def outputs(self):
        from pathlib import Path
        return [Path(self.options["path"])]

    def open(self, item, info, staging):
        import os

        class Counting(Writer):
            count = 0

            def write(self, chunk):
                self.count += len(chunk)

            def close(self):
                pass

            def gathered(self):
                return {"points": self.count, "pid": os.getpid()}
        return Counting()

    def finish(self, gathered, staging):
        if self.options["fail"] == "yes":
            raise StageError(f"{self.label}: failed at the end")
        final = self.outputs()[0]
        staging.create(final).write_text("".join(f"{item.name} {kept['points']} {kept['pid']}\n"
                                                 for item, kept in gathered))
        return {str(final): {"items": len(gathered)}}


ENTRIES = {
    "source.counting": CountingSource,
    "transform.failing": FailingTransform,
    "transform.whole": WholeCloudTransform,
    "transform.mislabelled": MislabelledTransform,
    "transform.slow": SlowTransform,
    "transform.tidy": TidyTransform,
    "sink.lengths": ChunkLengthsSink,
    "sink.totals": TotalsSink,
    "sink.las": "stages.las:LasSink",
    "sink.ply": "stages.ply:PlySink",
}
