"""The Extra Bytes VLR of an output as the LAS 1.4 specification (R15, "Extra Bytes") asks, set in the complete
file's bytes: the `min` and `max` of each extra dimension over the points written, and the input's `no_data`.

`min` and `max` are "the minimum and maximum values of the attribute in the LAS file as computed from the raw
value stored in the LAS point record, without any scale or offset values applied", upcast to 8 bytes (unsigned
to uint64, signed to int64, floats to double), meaningful only when bits 1 and 2 of `options` are set; unused
fields must be zero. laspy 2.7 gets them wrong (each chunk's first point stands for the whole chunk, and a file
without points claims its starting sentinels) and rebuilds the descriptions without their `no_data`, so the
writer measures the ranges chunk by chunk and sets both once the file is complete.
"""
import struct

from .header import stored_records

NO_DATA_BIT, MIN_BIT, MAX_BIT = 1 << 0, 1 << 1, 1 << 2  # the `options` bits: no_data, min, max relevant
DESCRIPTOR = 192  # bytes of one extra-bytes descriptor
NAME, OPTIONS, NO_DATA, MIN, MAX = slice(4, 36), 3, 40, 64, 88  # where its fields are
VLR_HEADER = 54
UPCAST = {"u": "<Q", "i": "<q", "f": "<d"}


def descriptors(data):
    """{name: descriptor bytes} of the data of an Extra Bytes VLR."""
    found = {}
    for position in range(0, len(data) - DESCRIPTOR + 1, DESCRIPTOR):
        descriptor = data[position:position + DESCRIPTOR]
        found[bytes(descriptor[NAME]).split(b"\0", 1)[0].decode("ascii", "replace")] = bytes(descriptor)
    return found


def input_no_data(facts):
    """{name: (data type, the 24 bytes of no_data)} of the typed extra dimensions of a LAS input that set one."""
    if not facts:
        return {}
    found = {}
    for user_id, record_id, _, data in stored_records(facts["header"], extended=False):
        if (user_id, record_id) == ("LASF_Spec", 4):
            for name, descriptor in descriptors(data).items():
                if descriptor[2] != 0 and descriptor[OPTIONS] & NO_DATA_BIT:
                    found[name] = (descriptor[2], descriptor[NO_DATA:NO_DATA + 24])
    return found


class ExtraBytesRanges:
    """The lowest and highest raw value of each element of each typed extra dimension (data_type 1-30) over
    the points written, leaving out its no_data value and NaN; and the no_data values it keeps from the input."""

    def __init__(self, header, record_dtype, facts):
        found = header.vlrs.get("ExtraBytesVlr")
        typed = [(d.format_name(), d.data_type) for d in (found[0].extra_bytes_structs if found else [])
                 if d.data_type != 0]
        given = input_no_data(facts)
        self.no_data = {name: given[name][1] for name, data_type in typed
                        if name in given and given[name][0] == data_type and name in record_dtype.names}
        self.dimensions = [(name, self.no_data_values(name, record_dtype)) for name, _ in typed
                           if name in record_dtype.names]
        self.kinds = {name: UPCAST[record_dtype[name].base.kind] for name, _ in self.dimensions}
        self.ranges = {}  # name -> [(low, high) or None per element]

    def no_data_values(self, name, record_dtype):
        if name not in self.no_data:
            return None
        dtype = record_dtype[name]
        count = dtype.shape[0] if dtype.shape else 1
        return struct.unpack_from(f"<{count}{UPCAST[dtype.base.kind][1]}", self.no_data[name])

    def of(self, records):
        """[(name, [(low, high) or None per element])] of a chunk's records (done in the compute thread)."""
        import numpy as np
        found = []
        for name, no_data in self.dimensions if len(records) else ():
            values = records[name].reshape(len(records), -1)
            elements = []
            for index in range(values.shape[1]):
                column = values[:, index]
                keep = ~np.isnan(column) if column.dtype.kind == "f" else None
                if no_data is not None:
                    other = column != no_data[index]
                    keep = other if keep is None else keep & other
                if keep is not None and not keep.all():
                    column = column[keep]
                elements.append((column.min().item(), column.max().item()) if len(column) else None)
            found.append((name, elements))
        return found

    def add(self, found):
        for name, elements in found:
            seen = self.ranges.setdefault(name, [None] * len(elements))
            for index, pair in enumerate(elements):
                if pair is not None:
                    old = seen[index]
                    seen[index] = pair if old is None else (min(old[0], pair[0]), max(old[1], pair[1]))

    def write_into(self, handle):
        """Sets min, max, no_data and their option bits in the Extra Bytes VLR of the complete file open in
        `handle` (r+b). A dimension is given a range when each of its elements has one, else none (bits
        clear, fields zero); undocumented bytes (data_type 0, whose `options` is their count) none at all."""
        where = extra_bytes_data(handle)
        if where is None:
            return
        handle.seek(where[0])
        data = bytearray(handle.read(where[1]))
        for position in range(0, len(data) - DESCRIPTOR + 1, DESCRIPTOR):
            descriptor = data[position:position + DESCRIPTOR]
            name = bytes(descriptor[NAME]).split(b"\0", 1)[0].decode("ascii", "replace")
            descriptor[MIN:MIN + 24] = descriptor[MAX:MAX + 24] = bytes(24)
            if descriptor[2] == 0:
                continue
            if name in self.no_data:
                descriptor[NO_DATA:NO_DATA + 24] = self.no_data[name]
                descriptor[OPTIONS] |= NO_DATA_BIT
            elements = self.ranges.get(name)
            if elements and all(pair is not None for pair in elements):
                for index, (low, high) in enumerate(elements):
                    struct.pack_into(self.kinds[name], descriptor, MIN + 8 * index, low)
                    struct.pack_into(self.kinds[name], descriptor, MAX + 8 * index, high)
                descriptor[OPTIONS] |= MIN_BIT | MAX_BIT
            else:
                descriptor[OPTIONS] &= ~(MIN_BIT | MAX_BIT) & 0xFF
            data[position:position + DESCRIPTOR] = descriptor
        handle.seek(where[0])
        handle.write(data)


def extra_bytes_data(handle):
    """(offset, length) of the data of the Extra Bytes VLR (LASF_Spec, record 4) of a LAS file, or None."""
    handle.seek(94)
    header_size, _, count = struct.unpack("<HII", handle.read(10))
    position = header_size
    for _ in range(count):
        handle.seek(position)
        head = handle.read(VLR_HEADER)
        if len(head) < VLR_HEADER:
            return None
        record_id, length = struct.unpack_from("<HH", head, 18)
        if head[2:18].split(b"\0", 1)[0] == b"LASF_Spec" and record_id == 4:
            return position + VLR_HEADER, length
        position += VLR_HEADER + length
    return None
