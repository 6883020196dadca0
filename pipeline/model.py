"""The records that flow between stages: items, what a point stream holds, and bounds. No I/O.

A chunk is a numpy structured array: float64 `x`, `y`, `z` in real-world units, and every other
attribute of the input under its LAS dimension name (`intensity`, `classification`, `red`, ...).
"""
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterator, Mapping, Optional

XYZ = ("x", "y", "z")
MAX_NAME_BYTES = 150


def frozen(mapping):
    return MappingProxyType(dict(mapping or {}))


def safe_name(name):
    """A name that is safe as one path component: no separators, no `..`, no control characters.

    >>> safe_name("../../etc/passwd")
    'etc_passwd'
    >>> safe_name("scan 01.las")
    'scan 01.las'
    """
    cleaned = re.sub(r"[\x00-\x1f\x7f/\\:]+", "_", str(name))
    cleaned = re.sub(r"\.\.+", "_", cleaned).strip(" ._")
    encoded = cleaned.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:  # file systems allow 255 bytes; leave room for a suffix and staging
        cleaned = encoded[:MAX_NAME_BYTES].decode("utf-8", errors="ignore").rstrip(" ._")
    return cleaned or "unnamed"


@dataclass(frozen=True)
class Item:
    """One point cloud that a source yields, e.g. one input file or one Cupix sub."""

    id: str
    name: str
    index: int
    location: str  # a file path or a URL, for messages and the report
    point_count: Optional[int] = None  # when cheaply known up front
    fields: Mapping[str, str] = field(default_factory=dict)  # extra path-template fields
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "fields", frozen(self.fields))
        object.__setattr__(self, "metadata", frozen(self.metadata))

    def template_values(self):
        """The values that sink path templates may use."""
        values = {"name": safe_name(self.name), "id": safe_name(self.id), "index": str(self.index)}
        values.update({key: safe_name(value) for key, value in self.fields.items()})
        return values

    def __reduce__(self):  # mapping proxies do not pickle; worker processes need items
        return (Item, (self.id, self.name, self.index, self.location, self.point_count,
                       dict(self.fields), dict(self.metadata)))


@dataclass(frozen=True)
class Bounds:
    """Axis-aligned bounds of x, y, z."""

    mins: tuple
    maxs: tuple

    @staticmethod
    def of(chunk) -> "Optional[Bounds]":
        """The bounds of a chunk or of Coordinates; None when it is empty."""
        if len(chunk) == 0:
            return None
        if isinstance(chunk, Coordinates):
            return Bounds(tuple(chunk.xyz.min(axis=1).tolist()), tuple(chunk.xyz.max(axis=1).tolist()))
        return Bounds(tuple(float(chunk[a].min()) for a in XYZ), tuple(float(chunk[a].max()) for a in XYZ))

    def union(self, other: "Optional[Bounds]") -> "Bounds":
        if other is None:
            return self
        return Bounds(tuple(map(min, self.mins, other.mins)), tuple(map(max, self.maxs, other.maxs)))

    def corners(self):
        return [(x, y, z) for x in (self.mins[0], self.maxs[0])
                for y in (self.mins[1], self.maxs[1]) for z in (self.mins[2], self.maxs[2])]

    def as_dict(self):
        return {"min": list(self.mins), "max": list(self.maxs)}


def union_bounds(a: Optional[Bounds], b: Optional[Bounds]) -> Optional[Bounds]:
    return b if a is None else a.union(b)


@dataclass(frozen=True)
class StreamInfo:
    """What is known about an item's point stream before the first chunk.

    `format_facts` is reader-specific detail that a sink of the same format uses to write the data back
    without loss (for LAS: version, point format, scales, offsets, VLRs). `applied` lists what the
    transforms did, in order (each a dict with at least `stage`, and `matrix` when points moved).
    """

    dtype: Any
    source_format: str
    point_count: Optional[int] = None
    bounds: Optional[Bounds] = None
    format_facts: Mapping[str, Any] = field(default_factory=dict)
    applied: tuple = ()

    @property
    def moved(self):
        """True once a transform has changed coordinates."""
        return any("matrix" in step for step in self.applied)

    def with_step(self, step: Mapping, **changes) -> "StreamInfo":
        return replace(self, applied=self.applied + (dict(step),), **changes)


@dataclass
class PointStream:
    """An opened item: what is known up front, and its chunks.

    `raw`, when a reader offers it, is the same points as the format's own records (e.g. LAS point
    records with scaled integer coordinates); a run whose transforms are all affine and whose sinks all
    accept these records moves them without building chunks (see runner.process_item). Only one of
    `chunks` and `raw.blocks` is read.
    """

    info: StreamInfo
    chunks: Iterator[Any]
    raw: Any = None


class Coordinates:
    """x, y, z as the rows of one (3, n) float64 array: what the fast path moves instead of a chunk.

    It reads like a chunk of only x, y, z (`coordinates["x"]`, `len`), but each axis is contiguous and one
    numpy call works on all three (the per-axis constants broadcast), so there are few calls per block.
    """

    __slots__ = ("xyz",)

    def __init__(self, xyz):
        self.xyz = xyz

    @staticmethod
    def of(chunk) -> "Coordinates":
        """The x, y, z of a structured chunk (copied)."""
        import numpy as np
        return Coordinates(np.stack([np.asarray(chunk[axis], dtype=np.float64) for axis in XYZ]))

    def __len__(self):
        return self.xyz.shape[1]

    def __getitem__(self, name):
        if name not in XYZ:
            raise KeyError(name)
        return self.xyz[XYZ.index(name)]


def copy_records(records, out=None):
    """A copy of structured records (into `out`, of the same dtype, when given), made as whole records of
    bytes: numpy copies records of many fields field by field, 50 times slower.

    >>> import numpy as np
    >>> records = np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "u1"), ("b", "<f8")])
    >>> copy = copy_records(records)
    >>> copy[0] = (9, 9.0)
    >>> copy.tolist(), records.tolist()
    ([(9, 9.0), (3, 4.5)], [(1, 2.5), (3, 4.5)])
    """
    import numpy as np
    if out is None:
        out = np.empty(len(records), records.dtype)
    whole = f"V{records.dtype.itemsize}"
    np.copyto(out.view(whole), records.view(whole))
    return out


ChunkFunction = Callable[[Any], Any]
