"""LAS point records in chunks: the chunk layout of a point format, real-world x, y, z from the stored
integers, bit fields, and the layout that decodes a chunk's columns from its records (LasLayout); shared by
the reader and the writer."""
import functools
import re

from pipeline.errors import SourceError
from pipeline.model import XYZ

from .header import laspy_module


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
    """Real-world x, y, z of LAS point records as a (3, n) float64 array, computed one way for every path:
    X * scale + offset."""
    import numpy as np
    xyz = np.empty((3, len(records)))  # rows contiguous, whatever the layout of the records
    np.multiply(stored_xyz(records), np.asarray(scales, dtype=np.float64)[:, None], out=xyz)
    xyz += np.asarray(offsets, dtype=np.float64)[:, None]
    return xyz


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


class LasLayout:
    """How the columns of a chunk are decoded from its LAS records (Chunk.layout), to the chunk's types, as
    laspy decodes them: fields stored as the chunk holds them are handed out as they are, bit fields are
    unpacked, and laspy decodes the rest (scaled extra dimensions)."""

    kind = "las"

    def __init__(self, header):
        self.header = header
        self.point_format_id = header.point_format.id
        self.packed = packed_fields(self.point_format_id)

    def stored_as_is(self, records, name, wanted):
        """True when the records store field `name` exactly as a chunk column of type `wanted` holds it."""
        return name in records.dtype.names and name not in self.packed and records.dtype[name] == wanted

    def decode(self, records, name, wanted):
        import numpy as np
        if name in self.packed:
            return unpacked(records, self.packed[name]).astype(wanted.base, copy=False)
        if self.stored_as_is(records, name, wanted):
            return records[name]
        points = laspy_module().ScaleAwarePointRecord(records, self.header.point_format, self.header.scales,
                                                      self.header.offsets)
        return np.asarray(points[name]).astype(wanted.base, copy=False)


def described(error):
    """A library's error as words: its message, with its type when the message alone is a bare value (laspy
    says `63` for an unknown key)."""
    text = str(error).strip()
    return text if re.search(r"[A-Za-z]{3}", text) else f"{type(error).__name__} {text}".strip()
