"""LAS and LAZ: a streaming reader that checks the header before laspy sees it, and `sink.las`."""
import copy
import datetime
import functools
import io
import logging
import math
import os
import re
import struct
import threading
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.background import ahead, signals_deferred
from pipeline.errors import OptionError, SinkError, SourceError
from pipeline.imports import require
from pipeline.model import XYZ, Coordinates, PointStream, StreamInfo, copy_records
from pipeline.options import Option, boolean, one_of_values, template, xyz_numbers
from pipeline.stage import Sink, Writer

log = logging.getLogger(__name__)

READ_AHEAD = 1  # blocks read while the previous one is processed
LAZ_BATCH = 1 << 20  # points handed to lazrs at once: enough chunks for its parallel compression
RAW_BLOCK = 1 << 15  # points per raw block: a few numpy calls per block, each over data that stays in cache
HEADER_MIN_SIZE = 227
CREATION_FIELD = 90  # the header's creation day of year and year, two unsigned shorts
VLR_HEADER_SIZE = 54
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
DEFAULT_SCALE = 0.001
# the smallest legacy point format that holds these optional dimensions
FORMAT_FOR = {(False, False): 0, (True, False): 1, (False, True): 2, (True, True): 3}
COLOURS = ("red", "green", "blue")
WAVEFORM_FORMATS = (4, 5, 9, 10)


def laspy_module():
    return require("laspy", "LAS/LAZ files")


@dataclass
class HeaderCheck:
    """What the raw header says, what is wrong with it, and the bytes to patch so laspy reads it safely."""

    version: str
    point_format: int
    compressed: bool
    point_count: int
    warnings: list = field(default_factory=list)
    patches: dict = field(default_factory=dict)  # file offset -> replacement bytes
    bounds_usable: bool = True  # False when the header's bounds are not finite numbers
    created: tuple = (0, 0)  # the creation (year, day of year) as stored, 0 when unset


TRUNCATED = ("error", "read")  # what to do with a file holding fewer points than its header claims
# the size of each point format's record, and of the header of each LAS 1.x version
FORMAT_SIZES = (20, 28, 26, 34, 57, 63, 30, 36, 38, 59, 67)
HEADER_SIZES = {0: 227, 1: 227, 2: 227, 3: 235, 4: 375}
AXES_SCALES, AXES_OFFSETS, HEADER_BOUNDS = 131, 155, 179  # byte offsets of the scales, offsets and max/min
LASZIP_VLR = (b"laszip encoded", 22204)  # user id and record id of the VLR that describes LAZ compression
VARIABLE_CHUNKS = 0xFFFFFFFF
# lazrs holds one whole LAZ chunk in memory (and allocates it from the laszip VLR's chunk size, before reading
# a point): a chunk size that would need more than this is taken for a corrupt VLR, not allocated (LASzip
# writes 50,000 points a chunk, about 2-3 MB)
LAZ_CHUNK_BYTES = 256 << 20
LAZ_MIN_CHUNK_BYTES = 8  # no compressed chunk is smaller (its first point alone is stored whole)


def truncation(path, claimed, held, truncated, where=""):
    """A file holding fewer points than its header claims: an error, or with `truncated: read` a warning."""
    if truncated != "read":
        raise SourceError(f"{path}: header claims {claimed} points but the file holds {held}{where} "
                          "(`truncated: read` reads what is there)")
    return f"header claims {claimed} points but the file holds {held}{where}; reading {held}"


def check_numbers(path, head):
    """The scales and offsets must make finite coordinates of every stored integer, each a scale step from
    the next (a scale finer than float64 holds at the offset gives every point the same coordinate). The header
    bounds are only a hint, which sinks choose their offsets from: bounds no point can have (not finite, beyond
    what the integers reach, or a minimum above its maximum) are left out, with a warning. Returns (warnings,
    bounds usable)."""
    scales = struct.unpack_from("<3d", head, AXES_SCALES)
    offsets = struct.unpack_from("<3d", head, AXES_OFFSETS)
    for axis, scale, offset in zip(XYZ, scales, offsets):
        if not math.isfinite(scale) or scale == 0:
            raise SourceError(f"{path}: corrupt LAS header: {axis} scale factor is {scale:g}; it must be a finite "
                              "number other than 0")
        if not math.isfinite(offset):
            raise SourceError(f"{path}: corrupt LAS header: {axis} offset is {offset:g}; it must be a finite number")
        reach = abs(scale) * 2 ** 31 + abs(offset)
        if not math.isfinite(reach):
            raise SourceError(f"{path}: corrupt LAS header: {axis} scale factor {scale:g} and offset {offset:g} give "
                              "coordinates that are not finite numbers")
        if math.ulp(reach) > abs(scale):
            raise SourceError(f"{path}: corrupt LAS header: {axis} scale factor {scale:g} is finer than 64-bit floats "
                              f"can hold at offset {offset:g} (they are {math.ulp(reach):g} apart there)")
    bounds = struct.unpack_from("<6d", head, HEADER_BOUNDS)  # max x, min x, max y, min y, max z, min z
    for index, (scale, offset) in enumerate(zip(scales, offsets)):
        high, low = bounds[2 * index], bounds[2 * index + 1]
        reach = abs(scale) * (2 ** 31 + 1)
        if not offset - reach <= low <= high <= offset + reach:  # also false for NaN
            return ["header bounds are not within what its scale and offset can store; they are left out"], False
    return [], True


def check_header(path, truncated="error") -> HeaderCheck:
    """Reads the fixed header and walks the VLR headers, bounded by the point-data offset.

    laspy trusts the VLR count; a file claiming a billion VLRs makes it hang, one claiming too many
    makes it read point bytes as VLRs. Here the count is capped at what fits, with a warning. A file
    holding fewer points than the header claims is an error, or with `truncated="read"` read as it is,
    with a warning. Fields that laspy would fail on with a bare number, or that would give coordinates
    that are not finite, are refused naming the field.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        head = handle.read(375)
        if len(head) < HEADER_MIN_SIZE or head[:4] != b"LASF":
            raise SourceError(f"{path}: not a LAS file (too short or no LASF signature)")
        major, minor = head[24], head[25]
        header_size, = struct.unpack_from("<H", head, 94)
        offset, claimed_vlrs = struct.unpack_from("<II", head, 96)
        format_byte, record_length, legacy_count = struct.unpack_from("<BHI", head, 104)
        if major != 1 or minor > 4:
            raise SourceError(f"{path}: unsupported LAS version {major}.{minor}")
        if header_size < HEADER_SIZES[minor]:
            raise SourceError(f"{path}: corrupt LAS header: header size {header_size} is too small for LAS "
                              f"{major}.{minor} ({HEADER_SIZES[minor]} bytes)")
        if header_size > offset or offset > size:
            raise SourceError(f"{path}: corrupt LAS header: header size {header_size}, point data at byte {offset}, "
                              f"file size {size}")
        point_format = format_byte & 0x3F
        if point_format >= len(FORMAT_SIZES):
            raise SourceError(f"{path}: corrupt LAS header: unknown point format {point_format} (LAS has formats 0 "
                              f"to {len(FORMAT_SIZES) - 1})")
        if record_length < FORMAT_SIZES[point_format]:
            raise SourceError(f"{path}: corrupt LAS header: point records of {record_length} bytes are too short for "
                              f"point format {point_format} ({FORMAT_SIZES[point_format]} bytes)")
        compressed = bool(format_byte & 0x80) and not format_byte & 0x40  # as laspy tells a LAZ file
        result = HeaderCheck(f"{major}.{minor}", point_format, compressed, legacy_count)
        result.created = struct.unpack_from("<HH", head, 90)[::-1]
        number_warnings, result.bounds_usable = check_numbers(path, head)
        result.warnings += number_warnings
        position, fitting, laszip = header_size, 0, None
        while fitting < claimed_vlrs and position + VLR_HEADER_SIZE <= offset:
            handle.seek(position)
            vlr = handle.read(VLR_HEADER_SIZE)
            length, = struct.unpack_from("<H", vlr, 20)
            if position + VLR_HEADER_SIZE + length > offset:
                break
            if (vlr[2:18].rstrip(b"\0"), struct.unpack_from("<H", vlr, 18)[0]) == LASZIP_VLR:
                laszip = handle.read(length)
            position += VLR_HEADER_SIZE + length
            fitting += 1
        if fitting < claimed_vlrs:
            result.warnings.append(f"header claims {claimed_vlrs} VLRs but only {fitting} fit before the point data "
                                   f"at byte {offset}; reading {fitting}")
            result.patches[100] = struct.pack("<I", fitting)
        count_field = 107
        if minor >= 4:
            count_field = 247
            result.point_count, = struct.unpack_from("<Q", head, 247)
            first_evlr, = struct.unpack_from("<Q", head, 235)
        else:
            first_evlr = 0
        if result.compressed:
            check_laz(path, handle, size, offset, record_length, result.point_count, laszip)
        else:
            end = first_evlr if offset <= first_evlr <= size else size
            available = (end - offset) // record_length
            if result.point_count > available:
                result.warnings.append(truncation(path, result.point_count, available, truncated))
                result.patches[107] = struct.pack("<I", min(available, 2 ** 32 - 1))
                if count_field == 247:
                    result.patches[247] = struct.pack("<Q", available)
                result.point_count = available
        return result


def check_laz(path, handle, size, offset, record_length, point_count, laszip):
    """Checks what lazrs would allocate from before it does: the laszip VLR's chunk size and point layout,
    and the chunk table (its place, its count, and the chunks it lists against the bytes there are).
    lazrs trusts them, and a corrupt value makes it ask for tens of gigabytes, which aborts the process."""
    where = f"{path}: corrupt LAZ file:"
    if laszip is None or len(laszip) < 34:
        raise SourceError(f"{where} no laszip VLR describes its compression")
    chunk_size, = struct.unpack_from("<I", laszip, 12)
    items, = struct.unpack_from("<H", laszip, 32)
    if len(laszip) < 34 + 6 * items:
        raise SourceError(f"{where} the laszip VLR lists {items} items but holds {(len(laszip) - 34) // 6}")
    item_bytes = sum(struct.unpack_from("<H", laszip, 34 + 6 * i + 2)[0] for i in range(items))
    if item_bytes != record_length:
        raise SourceError(f"{where} the laszip VLR describes points of {item_bytes} bytes but the header says "
                          f"{record_length}")
    variable = chunk_size == VARIABLE_CHUNKS
    if not variable and not 0 < chunk_size * record_length <= LAZ_CHUNK_BYTES:
        raise SourceError(f"{where} the laszip VLR gives chunks of {chunk_size} points")
    start = offset + 8  # the compressed points follow the chunk table's offset
    if size < start:
        if point_count:
            raise SourceError(f"{path}: header claims {point_count} points but the file ends before its first one")
        return
    handle.seek(offset)
    table, = struct.unpack("<q", handle.read(8))
    if table <= offset:  # a writer that could not go back writes the offset at the end of the file (as lazrs reads)
        handle.seek(size - 8)
        table, = struct.unpack("<q", handle.read(8))
        if table <= offset:
            return  # no chunk table: lazrs says so
    if table + 8 > size:
        raise SourceError(f"{path}: header claims {point_count} points but the file is cut short: it ends at byte "
                          f"{size}, before its chunk table at byte {table}")
    handle.seek(table + 4)
    chunks, = struct.unpack("<I", handle.read(4))
    if chunks > (table - start) // LAZ_MIN_CHUNK_BYTES:
        raise SourceError(f"{where} its chunk table lists {chunks} chunks in {table - start} bytes")
    if not chunks:
        return
    lazrs = require("lazrs", "LAZ files")
    handle.seek(offset)
    try:
        entries = lazrs.read_chunk_table(handle, lazrs.LazVlr(laszip))
    except Exception as error:
        raise SourceError(f"{where} cannot read its chunk table: {error}") from error
    points = sum(count for count, _ in entries) if variable else None
    used = sum(length for _, length in entries)
    if used > table - start or min(length for _, length in entries) <= 0:
        raise SourceError(f"{where} its chunk table lists chunks of {used} bytes in {table - start}")
    if variable and (points != point_count or min(count for count, _ in entries) <= 0):
        raise SourceError(f"{path}: header claims {point_count} points but the LAZ chunk table lists {points}")
    if not variable and not (len(entries) - 1) * chunk_size < max(point_count, 1) <= len(entries) * chunk_size:
        raise SourceError(f"{path}: header claims {point_count} points but the LAZ chunk table lists {len(entries)} "
                          f"chunks of {chunk_size}")


class PatchedFile(io.RawIOBase):
    """A read-only file whose bytes at given offsets are replaced, so laspy reads a repaired header."""

    def __init__(self, path, patches):
        self._file = open(path, "rb")
        self._patches = sorted(patches.items())

    def readable(self):
        return True

    def seekable(self):
        return True

    def seek(self, offset, whence=io.SEEK_SET):
        return self._file.seek(offset, whence)

    def tell(self):
        return self._file.tell()

    def readinto(self, buffer):
        start = self._file.tell()
        count = self._file.readinto(buffer)
        for offset, data in self._patches:
            low, high = max(offset, start), min(offset + len(data), start + count)
            if low < high:
                buffer[low - start:high - start] = data[low - offset:high - offset]
        return count

    def close(self):
        self._file.close()
        super().close()


def chunk_dtype(point_format):
    """The chunk layout for a laspy point format: float64 x, y, z then every other dimension."""
    import numpy as np
    fields = [(axis, "f8") for axis in XYZ]
    for dimension in point_format.dimensions:
        if dimension.name in ("X", "Y", "Z"):
            continue
        if dimension.kind.name == "BitField":
            fields.append((dimension.name, "u1"))
        elif dimension.scales is not None and np.any(np.asarray(dimension.scales) != 1) or \
                dimension.offsets is not None and np.any(np.asarray(dimension.offsets) != 0):
            shape = () if dimension.num_elements == 1 else (dimension.num_elements,)
            fields.append((dimension.name, "f8", shape) if shape else (dimension.name, "f8"))
        else:
            fields.append((dimension.name, dimension.dtype))
    return np.dtype(fields)


def laid_out(path, point_format):
    """chunk_dtype, for a point format read from a file: extra-bytes dimensions that cannot be laid out (no
    bytes, a name that is not printable ASCII or that another dimension has) are refused naming them."""
    names = set(XYZ)
    for dimension in point_format.dimensions:
        name = dimension.name
        if dimension.is_standard or name in ("X", "Y", "Z"):
            names.add(name)
            continue
        if not (name.isascii() and name.isprintable()):
            raise SourceError(f"{path}: corrupt LAS header: extra bytes dimension name {ascii(name)} is not printable "
                              "ASCII")
        if not dimension.num_elements or not dimension.num_bits:
            raise SourceError(f"{path}: corrupt LAS header: extra bytes dimension {name!r} has no bytes")
        if name in names:
            raise SourceError(f"{path}: corrupt LAS header: extra bytes dimension {name!r} has the name of another "
                              "dimension")
        names.add(name)
    try:
        point_format.dtype()
        return chunk_dtype(point_format)
    except Exception as error:  # whatever else laspy cannot make of the extra-bytes VLR
        raise SourceError(f"{path}: corrupt LAS header: its point records cannot be laid out: {described(error)}") \
            from error


def stored_xyz(records):
    """The X, Y, Z integers of LAS point records (the first three fields of every point format) as a
    (3, n) int32 view, writable when the records are."""
    import numpy as np
    if records.flags.c_contiguous:
        return np.ndarray((3, len(records)), "<i4", records, strides=(4, records.dtype.itemsize))
    from numpy.lib.recfunctions import structured_to_unstructured
    return structured_to_unstructured(records[["X", "Y", "Z"]], copy=False).T


def scaled(records, scales, offsets):
    """Real-world x, y, z of LAS point records, computed one way for every path: X * scale + offset."""
    import numpy as np
    xyz = np.empty((3, len(records)))  # rows contiguous, whatever the layout of the records
    np.multiply(stored_xyz(records), np.asarray(scales, dtype=np.float64)[:, None], out=xyz)
    xyz += np.asarray(offsets, dtype=np.float64)[:, None]
    return Coordinates(xyz)


def to_chunk(points, dtype):
    import numpy as np
    chunk = np.empty(len(points), dtype)
    for axis, values in zip(XYZ, scaled(points.array, points.scales, points.offsets).xyz):
        chunk[axis] = values
    for name in dtype.names[3:]:
        chunk[name] = points[name]
    return chunk


def all_points(parts, path, count):
    """Passes on chunks or blocks of a file's points; a failure to read them, or a file that ends before
    `count` points, is a SourceError naming the file."""
    remaining = count
    try:
        for part in parts:
            remaining -= len(part)
            yield part
    except SourceError:
        raise
    except Exception as error:
        raise SourceError(f"{path}: cannot read points: {described(error)}") from error
    if remaining > 0:
        raise SourceError(f"{path}: file ends {remaining} points early")


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
        for points in self.reader.chunk_iterator(self.chunk_size):
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


@functools.lru_cache(maxsize=None)
def packed_fields(point_format_id):
    """The fields a LAS point format packs into bits: name -> (stored field, mask, shift)."""
    from laspy.point.dims import get_sub_fields_dict
    return {name: (stored, sub.mask, (sub.mask & -sub.mask).bit_length() - 1)
            for name, (stored, sub) in get_sub_fields_dict(point_format_id).items()}


def unpacked(records, packed):
    """The values of one bit-packed field (see packed_fields) of LAS point records, as laspy decodes them."""
    import numpy as np
    stored, mask, shift = packed
    values = np.bitwise_and(records[stored], mask)
    values >>= shift
    return values


class RecordView:
    """Raw LAS records read like a chunk: x, y, z from the moved `xyz`, every other field decoded when asked
    for, to the chunk's type, exactly as the chunk path decodes it (to_chunk): fields stored as the chunk
    holds them are handed out as they are, bit fields are unpacked, and laspy decodes the rest (scaled
    extra dimensions)."""

    def __init__(self, block, xyz, header, dtype):
        self.block, self.xyz, self.dtype, self.header = block, xyz, dtype, header
        self.packed = packed_fields(header.point_format.id)

    def __len__(self):
        return len(self.xyz)

    def stored_as_is(self, name):
        """True when the block stores field `name` exactly as the chunk would hold it."""
        block = self.block.dtype
        return name in block.names and name not in self.packed and block[name] == self.dtype[name]

    def __getitem__(self, name):
        import numpy as np
        if name in XYZ:
            return self.xyz[name]
        wanted = self.dtype[name]
        if name in self.packed:
            return unpacked(self.block, self.packed[name]).astype(wanted.base, copy=False)
        if self.stored_as_is(name):
            return self.block[name]
        points = laspy_module().ScaleAwarePointRecord(self.block, self.header.point_format, self.header.scales,
                                                      self.header.offsets)
        return np.asarray(points[name]).astype(wanted.base, copy=False)


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

            chunks = all_points((to_chunk(points, dtype) for points in reader.chunk_iterator(chunk_size)), path,
                                header.point_count)
            raw = RawRecords(reader, header, chunk_size, path, checked.compressed)
            yield PointStream(info, chunks, raw=raw)
    finally:
        if chunks is not None:
            chunks.close()
        if raw is not None:
            raw.close()
        source.close()


def described(error):
    """A library's error as words: its message, with its type when the message alone is a bare value (laspy
    says `63` for an unknown key)."""
    text = str(error).strip()
    return text if re.search(r"[A-Za-z]{3}", text) else f"{type(error).__name__} {text}".strip()


def fit_values(values, target, name, where):
    """`values` converted to a LAS dimension's type, refusing to change any value."""
    import numpy as np
    target = np.dtype(target)
    if values.dtype == target or np.can_cast(values.dtype, target, "safe"):
        return values
    if len(values) == 0:
        return values.astype(target)
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = values.min(), values.max()
        integral = values.dtype.kind in "iub" or bool(np.all(np.floor(values) == values))
        if integral and info.min <= low and high <= info.max:
            return values.astype(target)
        raise SinkError(f"{where}: field {name!r} ({values.dtype}) has values {low}..{high} that do not fit "
                        f"the LAS dimension {name} ({target})")
    return values.astype(target)


def choose_offset(low, scale):
    """An offset near the data: whole units below the minimum (a multiple of the scale)."""
    unit = 1.0 if scale <= 1 else scale
    return math.floor(low / unit) * unit


# a point format that also holds colour (red, green, blue), GPS time or near infrared
WITH_RGB = {0: 2, 1: 3, 4: 5, 6: 7, 9: 10}
WITH_GPS = {0: 1, 2: 3}
WITH_NIR = {6: 8, 7: 8, 9: 10}


def point_format_for(current, names):
    """`current` kept when it holds every attribute present, else the smallest format that does."""
    if current is None:
        current = 0
    if all(c in names for c in COLOURS) and current in WITH_RGB:
        current = WITH_RGB[current]
    if "gps_time" in names and current in WITH_GPS:
        current = WITH_GPS[current]
    if "nir" in names and current in WITH_NIR:
        current = WITH_NIR[current]
    return current


class RememberingFile(io.FileIO):
    """A file that remembers the OS error of a failed write (a full disk), which lazrs, writing through
    it, reports only as "Failed to call write"."""

    error = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as error:
            self.error = error
            raise


def compress_into(point_writer, points, done):
    """Compresses points into a LAZ writer, in a thread of its own; `done` (a Future) gets the outcome."""
    try:
        point_writer.write_points(points)
        done.set_result(None)
    except BaseException as error:  # handed to the writer's thread
        done.set_exception(error)


def creation_date(info):
    """The (year, day of year) a LAS output's header gives as its creation: the input's own, as it stores it
    (0 when unset), else the day of SOURCE_DATE_EPOCH (the reproducible-builds convention), else unset (0, 0),
    so that the same inputs give the same bytes on any day."""
    if "created" in info.format_facts:
        return tuple(info.format_facts["created"])
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if not epoch:
        return 0, 0
    try:
        day = datetime.datetime.fromtimestamp(int(epoch), datetime.timezone.utc).timetuple()
    except (ValueError, OverflowError, OSError):
        raise SinkError(f"SOURCE_DATE_EPOCH={epoch!r}: expected seconds since 1970-01-01 (an integer)") from None
    return day.tm_year, day.tm_yday


class LasWriter(Writer):
    def __init__(self, sink, item, info, temp, compress):
        self.sink, self.item, self.info, self.temp, self.compress = sink, item, info, temp, compress
        self.where = f"{sink.label}: {item.name}"
        self.laspy = laspy_module()
        self.header = self.make_header(info)
        self.evlrs = self.kept_evlrs(info)
        self.writer = None
        self.batch, self.batched = None, 0  # LAZ records waiting for a bigger write (see store)
        self.spare, self.compressing = None, None  # the other batch buffer; the batch lazrs is compressing
        self.offsets_fixed = self.header_offsets_known(info)
        self.created = creation_date(info)
        self.file = None

    def make_header(self, info):
        import numpy as np
        laspy = self.laspy
        facts = info.format_facts.get("las")
        names = set(info.dtype.names)
        wanted = self.sink.options["version"]
        if facts:
            header = copy.deepcopy(facts["header"])
            header.vlrs = [v for v in header.vlrs if type(v).__name__ != "LasZipVlr"]
            current = str(header.version)
            version = wanted or ("1.2" if current == "1.0" else current)  # laspy writes 1.1 and later
            if version != current:
                log.info("%s: LAS %s input written as LAS %s", self.where, current, version)
            point_format = point_format_for(header.point_format.id, names)
            extra = [laspy.ExtraBytesParams(name=d.name, type=d.type_str(), scales=d.scales, offsets=d.offsets,
                                            description=d.description)
                     for d in header.point_format.extra_dimensions]
        else:
            version = wanted or "1.4"
            point_format = point_format_for(None, names)
            header = laspy.LasHeader(version=version, point_format=point_format)
            header.scales = np.array([DEFAULT_SCALE] * 3)
            extra = []
        if point_format >= 6 and version != "1.4":
            raise SinkError(f"{self.where}: point format {point_format} needs LAS 1.4; set `version: 1.4`")
        if (str(header.version), header.point_format.id) != (version, point_format):
            new_format = laspy.PointFormat(point_format)
            for params in extra:
                new_format.add_extra_dimension(params)
            header.set_version_and_point_format(laspy.header.Version.from_str(version), new_format)
        if self.sink.options["scale"] is not None:
            header.scales = np.array(self.sink.options["scale"])
        header.partial_reset()
        known = set(header.point_format.dimension_names) | set(XYZ)
        added = [name for name in info.dtype.names if name not in known]
        if added:
            header.add_extra_dims([laspy.ExtraBytesParams(name=name, type=self.extra_type(info.dtype[name]))
                                   for name in added])
        return header

    def kept_evlrs(self, info):
        evlrs = info.format_facts.get("las", {}).get("evlrs") or []
        if evlrs and self.header.version.minor < 4:
            log.warning("%s: %d EVLR(s) dropped: LAS %s has no EVLRs", self.where, len(evlrs), self.header.version)
            return []
        return evlrs

    def extra_type(self, dtype):
        import numpy as np
        if dtype.subdtype:
            base, shape = dtype.subdtype
            return f"{int(np.prod(shape))}{base.str.lstrip('<>|=')}"
        if dtype.kind not in "iuf":
            raise SinkError(f"{self.where}: a field of type {dtype} cannot be stored in LAS")
        return dtype

    def header_offsets_known(self, info):
        import numpy as np
        facts = info.format_facts.get("las")
        if isinstance(self.sink.options["offset"], list):
            self.header.offsets = np.array(self.sink.options["offset"])
            return True
        if facts and not info.moved and not facts.get("merged"):
            return True  # same coordinates, same integers: keep the input's offsets
        if info.bounds is not None:
            self.header.offsets = np.array([choose_offset(lo, s) for lo, s in zip(info.bounds.mins, self.header.scales)])
            return True
        return False

    def fix_offsets(self, first_chunk=None):
        """Chooses the offsets from the first chunk, when the stream's bounds did not fix them."""
        import numpy as np
        if self.offsets_fixed:
            return
        if first_chunk is not None and len(first_chunk):
            self.header.offsets = np.array([choose_offset(float(first_chunk[a].min()), s)
                                            for a, s in zip(XYZ, self.header.scales)])
        else:
            self.header.offsets = np.zeros(3)
        self.offsets_fixed = True

    def open_writer(self):
        self.fix_offsets()
        backend = self.laspy.LazBackend.detect_available() if self.compress else None
        self.file = io.BufferedWriter(RememberingFile(self.temp, "w"), 1 << 20)
        try:
            self.writer = self.laspy.open(self.file, mode="w", header=self.header, do_compress=self.compress,
                                          laz_backend=backend, closefd=True)
        except OSError:
            raise
        except Exception as error:
            raise SinkError(f"{self.where}: cannot write {self.sink.targets(self.item)[0]}: {error}") from error

    def quantised(self, coordinates):
        """The integers that store `coordinates` (model.Coordinates) with the header's scales and offsets,
        as a (3, n) float array of whole numbers, and the lowest and highest of each axis; refuses values
        that do not fit int32. Needs no file, so the fast path runs it in its compute thread."""
        import numpy as np
        if not len(coordinates):
            return np.empty((3, 0)), []
        self.fix_offsets(coordinates)
        scales, offsets = self.header.scales, self.header.offsets
        with np.errstate(over="ignore", invalid="ignore"):  # what does not fit is refused below, in one line
            values = np.subtract(coordinates.xyz, offsets[:, None])
            values /= scales[:, None]
            np.rint(values, out=values)
        lows, highs = values.min(axis=1), values.max(axis=1)
        for index, axis in enumerate(XYZ):
            if not (INT32_MIN <= lows[index] and highs[index] <= INT32_MAX):  # also false for NaN
                values = coordinates[axis]
                raise SinkError(f"{self.where}: {axis} values {values.min()}..{values.max()} do not fit LAS 32-bit "
                                f"integers with scale {scales[index]:g} and offset {offsets[index]:g}")
        return values, list(zip(lows.astype(np.int64).tolist(), highs.astype(np.int64).tolist()))

    def append(self, records, values, ranges):
        """Stores quantised coordinates (see `quantised`) in the X, Y, Z of `records` and writes them,
        keeping the header's bounds and counts up to date (what laspy's write_points does, without its
        sort per chunk)."""
        import numpy as np
        for stored, row in zip(stored_xyz(records), values):  # row by row: faster than one strided copy
            stored[...] = row
        returns = unpacked(records, packed_fields(self.header.point_format.id)["return_number"])
        counts = np.bincount(returns, minlength=16)
        if self.writer is None:
            self.open_writer()
        header = self.writer.header
        if header.max_point_count() - header.point_count < len(records):
            raise SinkError(f"{self.where}: more points than a LAS {header.version} file can hold")
        for index, (axis, (low, high)) in enumerate(zip(XYZ, ranges)):
            scale, offset = header.scales[index], header.offsets[index]
            setattr(header, f"{axis}_min", min(getattr(header, f"{axis}_min"), low * scale + offset))
            setattr(header, f"{axis}_max", max(getattr(header, f"{axis}_max"), high * scale + offset))
        by_return = header.number_of_points_by_return
        by_return[:] += counts[1:len(by_return) + 1].astype(by_return.dtype)
        header.point_count += len(records)
        extra_bytes = header.vlrs.get("ExtraBytesVlr")
        if extra_bytes:
            extra_bytes[0].grow(self.laspy.PackedPointRecord(records, header.point_format))
        self.store(records)

    def store(self, records):
        """Hands records to laspy; for LAZ, in batches of LAZ_BATCH points, so that lazrs compresses many
        chunks in parallel per call (the fast path's blocks are small)."""
        import numpy as np
        if not self.compress:
            self.writer.point_writer.write_points(self.laspy.PackedPointRecord(records, self.header.point_format))
            return
        if self.batch is None:
            self.batch = np.empty(LAZ_BATCH, records.dtype)
        start = 0
        while start < len(records):
            take = min(len(records) - start, LAZ_BATCH - self.batched)
            copy_records(records[start:start + take], self.batch[self.batched:self.batched + take])
            self.batched += take
            start += take
            if self.batched == LAZ_BATCH:
                self.flush()

    def flush(self):
        """Starts compressing the batch in a background thread (lazrs releases the GIL), so the next
        batch fills meanwhile; one batch is compressed at a time, in order."""
        import numpy as np
        if not self.batched:
            return
        self.finish_compressing()
        points = self.laspy.PackedPointRecord(self.batch[:self.batched], self.header.point_format)
        done = Future()
        thread = threading.Thread(target=compress_into, args=(self.writer.point_writer, points, done),
                                  name="laz-compress", daemon=True)
        with signals_deferred():  # once started, the thread must be known to abort(), which waits for it
            thread.start()
            self.compressing = (done, self.batch)
        self.batch = self.spare if self.spare is not None else np.empty_like(self.batch)
        self.spare, self.batched = None, 0

    def finish_compressing(self):
        """Waits for the batch being compressed; raises its error, if any. A wait broken off (Ctrl-C) leaves
        the batch `compressing`, so that abort() waits for it again: no thread may be left inside lazrs when
        the process exits, which then aborts ("FATAL: exception not rethrown")."""
        if self.compressing is not None:
            done, batch = self.compressing
            try:
                with self.os_errors():
                    done.result()
            finally:
                if done.done():
                    self.compressing, self.spare = None, batch

    @contextmanager
    def os_errors(self):
        """lazrs reports the OS error of a write it makes through `self.file` (a full disk) only as "Failed to
        call write": raise the OS error itself, which the runner reports naming the file."""
        try:
            yield
        except Exception:
            if self.file is not None and self.file.raw.error is not None:
                raise self.file.raw.error from None
            raise

    def write(self, chunk):
        import numpy as np
        if not len(chunk):
            return
        self.fix_offsets(chunk)
        records = np.zeros(len(chunk), self.header.point_format.dtype())
        record = self.laspy.ScaleAwarePointRecord(records, self.header.point_format, self.header.scales,
                                                  self.header.offsets)  # scaled extra dims take real values
        formats = {d.name: d for d in self.header.point_format.dimensions}
        for name in chunk.dtype.names[3:]:
            dimension = formats[name]
            values = chunk[name]
            if dimension.is_standard and dimension.kind.name != "BitField":
                values = fit_values(values, dimension.dtype, name, self.where)
            elif dimension.kind.name == "BitField":
                values = fit_values(values, np.uint8, name, self.where)
                if len(values) and values.max() >= 1 << dimension.num_bits:
                    raise SinkError(f"{self.where}: field {name!r} has value {values.max()} that does not fit "
                                    f"its {dimension.num_bits} bits")
            record[name] = values
        self.append(records, *self.quantised(Coordinates.of(chunk)))

    def prepare_raw(self, block, xyz):
        """Raw records of the writer's own point format get their X, Y, Z from `xyz` (see Writer)."""
        return (block, *self.quantised(xyz))

    def write_raw(self, prepared):
        if len(prepared[0]):
            self.append(*prepared)

    def close(self):
        if self.writer is None:
            self.open_writer()
        self.flush()
        self.finish_compressing()
        with self.os_errors():
            if self.evlrs:
                self.writer.write_evlrs(self.laspy.vlrs.vlrlist.VLRList(self.evlrs))
            self.writer.close()
        with open(self.temp, "r+b") as handle:  # laspy writes today's date, and cannot write an unset one
            handle.seek(CREATION_FIELD)
            handle.write(struct.pack("<HH", self.created[1], self.created[0]))

    def abort(self):
        if self.writer is not None:
            try:
                self.finish_compressing()
                self.writer.close()
            except Exception:  # the file is deleted anyway
                pass


class LasSink(Sink):
    """Writes LAS or LAZ (by the path's extension), keeping every attribute, VLR and the input's scale."""

    options = (
        Option("path", template(), "output path template ending in .las or .laz, e.g. out/{name}.laz"),
        Option("version", one_of_values("1.2", "1.4"), "LAS version (default: the input's; 1.4 for other formats)",
               default=None),
        Option("scale", xyz_numbers(positive=True), "coordinate resolution (default: the input's, else 0.001)",
               default=None),
        Option("offset", xyz_numbers(keywords=("auto",)), "coordinate offset (auto: whole units below the "
               "transformed data)", default="auto"),
        Option("merge", boolean(), "write every item into one file", default=False),
    )

    @classmethod
    def check(cls, options):
        if Path(options["path"]).suffix.lower() not in (".las", ".laz"):
            raise OptionError("expected a path ending in .las or .laz", "path")

    def open(self, item, info, staging):
        final = self.targets(item)[0]
        return LasWriter(self, item, info, staging.create(final), final.suffix.lower() == ".laz")

    def open_raw(self, item, info, raw, staging):
        """The fast path: the input's own LAS records, written as they are but for X, Y, Z."""
        if getattr(raw, "kind", None) != "las":
            return None
        writer = self.open(item, info, staging)
        if writer.header.point_format.dtype() != raw.dtype:
            writer.abort()
            return None
        return writer
