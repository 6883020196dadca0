"""Reading LAS and LAZ as a point stream: chunks that carry the file's own point records (see pipeline.chunk),
so that a LAS sink writes their bytes again and other sinks decode only the columns they use."""
import io
import logging
from contextlib import contextmanager

from pipeline.background import ahead
from pipeline.chunk import Chunk
from pipeline.errors import SourceError
from pipeline.model import Bounds, PointStream, StreamInfo

from .header import PatchedFile, check_header, header_facts, laspy_module
from .records import LasLayout, all_points, described, laid_out, scaled

log = logging.getLogger(__name__)

READ_AHEAD = 1  # blocks read while the previous one is processed
# points decompressed at once, whatever the chunk size: enough LAZ chunks (LASzip writes 50,000 points each)
# for lazrs to decompress several in parallel
LAZ_READ = 1 << 18
WAVEFORM_FORMATS = (4, 5, 9, 10)


def decompressed(reader, chunk_size):
    """The records of a LAZ file in pieces of at most `chunk_size` points, decompressed LAZ_READ points or
    more at a time."""
    for points in reader.chunk_iterator(max(chunk_size, LAZ_READ)):
        records = points.array
        for start in range(0, len(records), chunk_size):
            yield records[start:start + chunk_size]


def read_records(path, header, chunk_size):
    """The records of an uncompressed file, read straight into arrays of at most `chunk_size` points (a
    file shorter than its header claims ends with a short one)."""
    import numpy as np
    count, dtype = header.point_count, header.point_format.dtype()
    with open(path, "rb") as handle:
        handle.seek(header.offset_to_point_data)
        for start in range(0, count, chunk_size):
            block = np.empty(min(chunk_size, count - start), dtype)
            got = handle.readinto(memoryview(block).cast("B"))
            if got != block.nbytes:
                yield block[:got // dtype.itemsize]
                return
            yield block


@contextmanager
def read_las(path, chunk_size, truncated="error"):
    """Opens a LAS/LAZ file as a point stream of chunks of at most `chunk_size` points; `truncated` says
    what a file holding fewer points than its header claims is: an error, or `read` as it is."""
    laspy = laspy_module()
    checked = check_header(path, truncated)
    for warning in checked.warnings:
        log.warning("%s: %s", path, warning)
    source = io.BufferedReader(PatchedFile(path, checked.patches), 1 << 20) if checked.patches else open(path, "rb")
    records = None
    try:
        try:
            reader = laspy.open(source, closefd=False)
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
                bounds = Bounds(tuple(map(float, header.mins)), tuple(map(float, header.maxs)))
            facts = {"las": header_facts(source, header, checked.compressed), "created": checked.created}
            info = StreamInfo(dtype=dtype, source_format="laz" if checked.compressed else "las",
                              point_count=header.point_count, bounds=bounds, format_facts=facts)
            layout = LasLayout(header)
            records = (decompressed(reader, chunk_size) if checked.compressed
                       else ahead(read_records(path, header, chunk_size), READ_AHEAD, name="las-read-ahead"))
            chunks = (Chunk(scaled(block, header.scales, header.offsets), dtype, records=block, layout=layout)
                      for block in all_points(records, path, header.point_count))
            yield PointStream(info, chunks)
    finally:
        if records is not None:
            records.close()  # and with it the read-ahead thread, when the consumer stopped early
        source.close()
