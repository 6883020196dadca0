"""The LAS header read and checked before laspy sees it: a file claiming a billion VLRs, a scale of 0,
more points than it holds or a LAZ chunk table that would make lazrs allocate without bound is caught here,
and what can be repaired is patched on the way to laspy (PatchedFile)."""
import io
import math
import os
import struct
from dataclasses import dataclass, field

from pipeline.errors import SourceError
from pipeline.imports import require
from pipeline.model import XYZ

HEADER_MIN_SIZE = 227
VLR_HEADER_SIZE = 54


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


def header_facts(source, header, compressed):
    """What a LAS writer needs of an input's header, as plain data that pickles: the bytes of its header and
    VLRs and of its EVLRs, as laspy read them (through `source`, the file as laspy saw it, patches and all)."""
    position = source.tell()
    try:
        source.seek(0)
        head = source.read(header.offset_to_point_data)
        evlrs = b""
        if header.version.minor >= 4 and header.number_of_evlrs and header.start_of_first_evlr:
            source.seek(header.start_of_first_evlr)
            evlrs = source.read()
    finally:
        source.seek(position)
    return {"header": head, "evlrs": evlrs, "evlr_count": header.number_of_evlrs if evlrs else 0,
            "compressed": compressed}


# records about the input's own storage: its LAZ compression, and a COPC octree over its points, which an
# output (other points, another order) does not have
NOT_COPIED = ("laszip encoded", "copc")


def header_of(facts):
    """The laspy header of `header_facts`, read again from its bytes (a new object each time). Its VLRs are
    the input's records as they were stored (laspy would write a GeoTIFF key directory, say, back changed),
    except the extra-bytes descriptions, which laspy keeps in step with the point format."""
    laspy = laspy_module()
    header = laspy.LasHeader.read_from(io.BytesIO(facts["header"]))
    parsed = {(v.user_id, v.record_id): v for v in header.vlrs}
    kept = []
    for user_id, record_id, description, data in stored_records(facts["header"], extended=False):
        if (user_id, record_id) == ("LASF_Spec", 4):
            if (user_id, record_id) in parsed:  # laspy drops one that describes no byte: so do we
                kept.append(parsed[(user_id, record_id)])
        elif user_id not in NOT_COPIED:
            kept.append(laspy.VLR(user_id, record_id, description, data))
    header.vlrs = laspy.vlrs.vlrlist.VLRList(kept)
    return header


def evlrs_of(facts):
    """The EVLRs of `header_facts`, as they were stored."""
    laspy = laspy_module()
    return [laspy.VLR(user_id, record_id, description, data)
            for user_id, record_id, description, data in stored_records(facts["evlrs"], extended=True,
                                                                        count=facts["evlr_count"])
            if user_id not in NOT_COPIED]


def copc_index(facts):
    """True when the input is a COPC file: its `copc` records describe an octree of its points."""
    return any(user_id == "copc" for user_id, *_ in stored_records(facts["header"], extended=False))


def stored_records(data, extended, count=None):
    """(user id, record id, description, record bytes) of the VLRs that follow a LAS header in `data` (the
    header's bytes up to the points), or of `count` EVLRs at the start of `data`."""
    if extended:
        position, header_format = 0, "<H16sHQ32s"
    else:
        header_size, = struct.unpack_from("<H", data, 94)
        count, = struct.unpack_from("<I", data, 100)
        position, header_format = header_size, "<H16sHH32s"
    size = struct.calcsize(header_format)
    records = []
    for _ in range(count):
        if position + size > len(data):
            break
        _, user_id, record_id, length, description = struct.unpack_from(header_format, data, position)
        body = data[position + size:position + size + length]
        records.append((text_field(user_id), record_id, text_field(description), bytes(body)))
        position += size + length
    return records


def text_field(raw):
    """A fixed-size text field of a VLR header, up to its first NUL, as laspy reads it."""
    return raw.split(b"\0", 1)[0].decode("ascii", errors="replace")

