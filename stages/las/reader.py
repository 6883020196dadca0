"""Reading LAS and LAZ as a point stream: chunks for any sink, and the raw records (RawRecords) for the
sinks that write them as they are."""
import io
import logging
from contextlib import contextmanager

from pipeline.background import ahead
from pipeline.errors import SourceError
from pipeline.model import PointStream, StreamInfo, copy_records

from .header import PatchedFile, check_header, laspy_module
from .records import RecordView, all_points, described, laid_out, scaled, to_chunk

log = logging.getLogger(__name__)

READ_AHEAD = 1  # blocks read while the previous one is processed
# points decompressed at once, whatever the chunk size: enough LAZ chunks (LASzip writes 50,000 points each)
# for lazrs to decompress several in parallel
LAZ_READ = 1 << 18
RAW_BLOCK = 1 << 15  # points per raw block: a few numpy calls per block, each over data that stays in cache
WAVEFORM_FORMATS = (4, 5, 9, 10)


def read_points(reader, chunk_size, compressed):
    """The file's point records (laspy records) in pieces of at most `chunk_size` points; a compressed file is
    read LAZ_READ points or more at a time."""
    for points in reader.chunk_iterator(max(chunk_size, LAZ_READ) if compressed else chunk_size):
        if len(points) <= chunk_size:
            yield points
            continue
        for start in range(0, len(points), chunk_size):
            yield points[start:start + chunk_size]


class RawRecords:
    """The LAS point records of a file, as they are stored: what `PointStream.raw` offers.

    Blocks are writable (sinks may overwrite their X, Y, Z); `held` says how many blocks the consumer may
    still be using at once (the newest included), and a buffer is reused only after that. Uncompressed
    files are read straight into a few rotating buffers by a read-ahead thread, so reading overlaps the
    work on the previous blocks.
    """

    kind = "las"

    def __init__(self, reader, header, chunk_size, path, compressed):
        self.reader, self.header, self.chunk_size, self.path = reader, header, chunk_size, path
        self.compressed = compressed
        self.dtype = header.point_format.dtype()
        self.opened = []  # the block generators handed out, closed with the file (see close)

    def blocks(self, held=1):
        reader = (self.decompressed() if self.compressed
                  else ahead(self.read_into_buffers(held), READ_AHEAD, name="las-read-ahead"))
        self.opened.append(reader)
        return all_points(reader, self.path, self.header.point_count)

    def close(self):
        """Stops what `blocks` started (its read-ahead thread and open file) when the consumer stopped early,
        e.g. on a sink's error, instead of leaving them to the garbage collector."""
        for generator in self.opened:
            try:
                generator.close()
            except ValueError:  # still running in the consumer's thread, which then stops it itself
                pass

    def decompressed(self):
        for points in read_points(self.reader, self.chunk_size, compressed=True):
            yield points.array if points.array.flags.writeable else copy_records(points.array)

    def read_into_buffers(self, held):
        import numpy as np
        count = self.header.point_count
        size = min(self.chunk_size, RAW_BLOCK, max(count, 1))
        # blocks alive at once: `held` by the consumer, READ_AHEAD queued, one being read
        buffers = [np.empty(size, self.dtype) for _ in range(held + READ_AHEAD + 1)]
        with open(self.path, "rb") as handle:
            handle.seek(self.header.offset_to_point_data)
            for number, start in enumerate(range(0, count, size)):
                block = buffers[number % len(buffers)][:min(size, count - start)]
                got = handle.readinto(memoryview(block).cast("B"))
                if got != block.nbytes:
                    yield block[:got // self.dtype.itemsize]
                    return
                yield block

    def xyz(self, block):
        """The block's real-world coordinates, as on the chunk path (see `scaled`)."""
        return scaled(block, self.header.scales, self.header.offsets)

    def view(self, block, xyz, dtype):
        """The block seen as a chunk of `dtype`, for a sink of another format (see RecordView)."""
        return RecordView(block, xyz, self.header, dtype)

@contextmanager
def read_las(path, chunk_size, truncated="error"):
    """Opens a LAS/LAZ file as a point stream of chunks of at most `chunk_size` points; `truncated` says
    what a file holding fewer points than its header claims is: an error, or `read` as it is."""
    laspy = laspy_module()
    checked = check_header(path, truncated)
    for warning in checked.warnings:
        log.warning("%s: %s", path, warning)
    source = PatchedFile(path, checked.patches) if checked.patches else open(path, "rb")
    chunks = raw = None
    try:
        try:
            reader = laspy.open(io.BufferedReader(source, 1 << 20) if checked.patches else source, closefd=False)
        except Exception as error:
            raise SourceError(f"{path}: cannot read LAS header: {described(error)}") from error
        with reader:
            header = reader.header
            if header.point_format.id in WAVEFORM_FORMATS:
                log.warning("%s: point format %d: the wave packet fields are kept, the waveform data itself is not",
                            path, header.point_format.id)
            dtype = laid_out(path, header.point_format)
            bounds = None
            if header.point_count and checked.bounds_usable:
                from pipeline.model import Bounds
                bounds = Bounds(tuple(map(float, header.mins)), tuple(map(float, header.maxs)))
            facts = {"las": {"header": header, "evlrs": list(reader.evlrs or []), "compressed": checked.compressed},
                     "created": checked.created}
            info = StreamInfo(dtype=dtype, source_format="laz" if checked.compressed else "las",
                              point_count=header.point_count, bounds=bounds, format_facts=facts)

            chunks = all_points((to_chunk(points, dtype) for points in read_points(reader, chunk_size, checked.compressed)),
                                path, header.point_count)
            raw = RawRecords(reader, header, chunk_size, path, checked.compressed)
            yield PointStream(info, chunks, raw=raw)
    finally:
        if chunks is not None:
            chunks.close()
        if raw is not None:
            raw.close()
        source.close()
