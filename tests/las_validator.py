"""A LAS header validator written from the LAS 1.0-1.4 specifications (ASPRS), not from laspy: it reads the
header, the VLR headers and the point records' bytes itself (laspy only decompresses LAZ points) and lists
every way the file departs from the specification. PDAL's and lasinfo's checks are the model."""
import struct
from pathlib import Path

import numpy as np

HEADER_SIZES = {(1, 0): 227, (1, 1): 227, (1, 2): 227, (1, 3): 235, (1, 4): 375}
BASE_RECORD = {0: 20, 1: 28, 2: 26, 3: 34, 4: 57, 5: 63, 6: 30, 7: 36, 8: 38, 9: 59, 10: 67}
EXTRA_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 8, 8: 8, 9: 4, 10: 8}
WKT_BIT = 1 << 4


def problems(path):
    """Every departure from the specification found in a LAS or LAZ file, as short sentences."""
    data = Path(path).read_bytes()
    found = []
    if data[:4] != b"LASF":
        return ["no LASF signature"]
    encoding, = struct.unpack_from("<H", data, 6)
    version = (data[24], data[25])
    header_size, offset, vlr_count, format_byte, record_length = struct.unpack_from("<HIIBH", data, 94)
    point_format = format_byte & 0x3F
    compressed = bool(format_byte & 0x80)
    legacy_count, = struct.unpack_from("<I", data, 107)
    legacy_returns = struct.unpack_from("<5I", data, 111)
    scales = np.array(struct.unpack_from("<3d", data, 131))
    offsets = np.array(struct.unpack_from("<3d", data, 155))
    bounds = struct.unpack_from("<6d", data, 179)  # max x, min x, max y, min y, max z, min z
    if version not in HEADER_SIZES:
        return [f"unknown version {version[0]}.{version[1]}"]
    if header_size != HEADER_SIZES[version]:
        found.append(f"header size {header_size}, the specification says {HEADER_SIZES[version]}")
    count, returns = legacy_count, list(legacy_returns)
    evlr_start = evlr_count = 0
    if version >= (1, 4):
        evlr_start, evlr_count, count = struct.unpack_from("<QIQ", data, 235)
        returns = list(struct.unpack_from("<15Q", data, 255))
        if point_format <= 5 and count < 2 ** 32:
            if legacy_count != count or list(legacy_returns) != returns[:5]:
                found.append(f"legacy point count {legacy_count} and by-return counts {list(legacy_returns)} differ "
                             f"from {count} and {returns[:5]} (formats 0-5 must fill them)")
        elif legacy_count or any(legacy_returns):
            found.append("legacy counts set for a point format or count they cannot describe")
    if point_format not in BASE_RECORD or (point_format > 5 and version < (1, 4)):
        return found + [f"point format {point_format} in LAS {version[0]}.{version[1]}"]
    if point_format >= 6 and not encoding & WKT_BIT:
        found.append(f"global encoding {encoding:#x} lacks the WKT bit, which formats 6-10 require")
    # the VLRs: each a 54-byte header and its record, filling the space up to the point data exactly
    position, extra_bytes = header_size, 0
    for _ in range(vlr_count):
        if position + 54 > len(data):
            return found + ["VLRs run past the end of the file"]
        user_id = data[position + 2:position + 18].rstrip(b"\0")
        record_id, length = struct.unpack_from("<HH", data, position + 18)
        body = data[position + 54:position + 54 + length]
        if user_id == b"LASF_Spec" and record_id == 4:
            for start in range(0, len(body) - 191, 192):
                kind, options = body[start + 2], body[start + 3]
                # 0: `options` bytes; 1-10 one value; 11-20 and 21-30 (LAS 1.3's arrays): two and three of 1-10
                extra_bytes += options if kind == 0 else (1 + (kind - 1) // 10) * EXTRA_TYPE_SIZES.get(
                    (kind - 1) % 10 + 1, 0)
        position += 54 + length
    if version == (1, 0):
        position += 2  # LAS 1.0's point data start signature, 0xCCDD
    if position != offset:
        found.append(f"offset to point data {offset}, but the header and VLRs end at {position}")
    if record_length != BASE_RECORD[point_format] + extra_bytes:
        found.append(f"record length {record_length}, format {point_format} with {extra_bytes} extra bytes makes "
                     f"{BASE_RECORD[point_format] + extra_bytes}")
    records = point_records(path, data, offset, count, record_length, compressed)
    if records is None:
        return found + ["point records cannot be read"]
    if not compressed:
        end = offset + count * record_length
        expected_end = evlr_start if evlr_count else len(data)
        if end != expected_end:
            found.append(f"the points end at byte {end}, the file (or its EVLRs) at {expected_end}")
    if len(records) != count:
        found.append(f"header says {count} points, the file holds {len(records)}")
        return found
    stored = np.ndarray((len(records), 3), "<i4", records.tobytes(), strides=(record_length, 4)) if count else \
        np.zeros((0, 3), "<i4")
    return_byte = records[:, 14] if count else np.zeros(0, np.uint8)
    return_numbers = return_byte & (0x0F if point_format >= 6 else 0x07)
    counted = np.bincount(return_numbers, minlength=16)[1:len(returns) + 1].tolist()
    if counted != returns:
        found.append(f"counts by return {returns}, the points have {counted}")
    if count:
        real = stored * scales + offsets
        lows, highs = real.min(axis=0), real.max(axis=0)
        header_bounds = (bounds[1], bounds[0], bounds[3], bounds[2], bounds[5], bounds[4])
        for axis, (low, high) in enumerate(zip(lows, highs)):
            if (header_bounds[2 * axis], header_bounds[2 * axis + 1]) != (low, high):
                found.append(f"{'xyz'[axis]} bounds {header_bounds[2 * axis]}..{header_bounds[2 * axis + 1]}, the "
                             f"points span {low}..{high}")
    return found


def point_records(path, data, offset, count, record_length, compressed):
    """The point records as a (count, record_length) uint8 array (LAZ decompressed by laspy)."""
    if not compressed:
        usable = min(count, max(0, len(data) - offset) // max(record_length, 1))
        return np.frombuffer(data, np.uint8, usable * record_length, offset).reshape(usable, record_length)
    import laspy
    try:
        array = laspy.read(path).points.array
    except Exception:
        return None
    return np.frombuffer(array.tobytes(), np.uint8).reshape(len(array), array.dtype.itemsize)
