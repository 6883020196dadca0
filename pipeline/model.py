"""What flows between stages besides the points: items, what is known of a point stream, and bounds. No I/O.

The points themselves travel in chunks (pipeline.chunk).
"""
import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Iterator, Mapping, Optional

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
        """The bounds of a chunk; None when it is empty."""
        if len(chunk) == 0:
            return None
        return Bounds(tuple(chunk.xyz.min(axis=1).tolist()), tuple(chunk.xyz.max(axis=1).tolist()))

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

    `dtype` lists the attributes of every chunk: x, y, z as f8, then each attribute with its type.
    `format_facts` is reader-specific detail that a sink of the same format uses to write the data back
    without loss (for LAS: the bytes of the header, VLRs and EVLRs), as plain data that pickles. `applied`
    lists what the transforms did, in order (each a dict with at least `stage`, and `matrix` when points
    moved).
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
    """An opened item: what is known up front, and its chunks (pipeline.chunk.Chunk)."""

    info: StreamInfo
    chunks: Iterator[Any]


def merge_infos(infos) -> StreamInfo:
    """One stream description for several items: every attribute of any of them (a type that can hold each
    item's), the union of their bounds and the sum of their counts; the first item's format facts."""
    import numpy as np
    from .errors import PipelineError

    fields = {}
    for info in infos:
        for name in info.dtype.names:
            kind = info.dtype[name]
            if name in fields and fields[name] != kind:
                if fields[name].shape != kind.shape:
                    raise PipelineError(f"merge: field {name!r} has shapes {fields[name].shape} and {kind.shape}")
                kind = np.dtype((np.result_type(fields[name].base, kind.base), kind.shape))
            fields[name] = kind
    bounds = None
    if all(info.bounds is not None for info in infos):
        for info in infos:
            bounds = union_bounds(bounds, info.bounds)
    counts = [info.point_count for info in infos]
    return replace(infos[0], dtype=np.dtype(list(fields.items())), bounds=bounds,
                   point_count=sum(counts) if None not in counts else None,
                   applied=tuple(step for info in infos for step in info.applied))


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

