"""E57 through the optional pye57 library: every scan of a file, each with its pose applied.

pye57 reads a whole scan at once, so an E57 item holds one scan in memory at a time (then split into
chunks); a file of several scans is one item whose chunks follow the scans in order.
"""
import logging
from contextlib import contextmanager

from pipeline.chunk import Chunk
from pipeline.errors import SourceError
from pipeline.imports import require
from pipeline.model import XYZ, PointStream, StreamInfo

log = logging.getLogger(__name__)

COLOURS = {"colorRed": "red", "colorGreen": "green", "colorBlue": "blue"}
GRID = {"rowIndex": "row_index", "columnIndex": "column_index"}
CARTESIAN = {"cartesianX", "cartesianY", "cartesianZ"}
SPHERICAL = {"sphericalRange", "sphericalAzimuth", "sphericalElevation"}
# read as coordinates, or used to leave out invalid points
HANDLED = CARTESIAN | SPHERICAL | {"intensity", "cartesianInvalidState", "sphericalInvalidState"}


def open_e57(path):
    pye57 = require("pye57", "E57 files")
    try:
        return pye57.E57(str(path))
    except Exception as error:
        raise SourceError(f"{path}: cannot read E57: {error}") from error


def intensity_limits(header, values):
    try:
        limits = header.node["intensityLimits"]
        return float(limits["intensityMinimum"].value()), float(limits["intensityMaximum"].value())
    except Exception:  # the limits are optional in E57
        return (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)


def scan_fields(path, e57, count):
    """The union of the fields of every scan, as chunk fields; fields pye57 cannot read are named in a warning."""
    import numpy as np
    fields = set()
    for index in range(count):
        fields |= set(e57.get_header(index).point_fields)
    if not (CARTESIAN <= fields or SPHERICAL <= fields):
        return None
    dtype = [(axis, "f8") for axis in XYZ]
    if "intensity" in fields:
        dtype.append(("intensity", "u2"))
    dtype += [(name, "u1") for key, name in COLOURS.items() if key in fields]
    dtype += [(name, "i4") for key, name in GRID.items() if key in fields]
    dropped = sorted(fields - HANDLED - set(COLOURS) - set(GRID))
    if dropped:
        log.warning("%s: E57 fields %s are not carried over (pye57 does not read them)", path, ", ".join(dropped))
    return np.dtype(dtype)


def scan_chunk(path, e57, index, dtype):
    import numpy as np
    header = e57.get_header(index)
    present = set(header.point_fields)
    try:
        data = e57.read_scan(index, intensity="intensity" in present, colors="colorRed" in present,
                             row_column="rowIndex" in present, ignore_missing_fields=True, transform=True)
    except Exception as error:
        raise SourceError(f"{path}: cannot read scan {index}: {error}") from error
    count = len(data["cartesianX"])
    chunk = np.zeros(count, dtype)
    chunk["x"], chunk["y"], chunk["z"] = data["cartesianX"], data["cartesianY"], data["cartesianZ"]
    if "intensity" in data and "intensity" in dtype.names:
        values = data["intensity"].astype(np.float64)
        low, high = intensity_limits(header, values)
        span = high - low if high > low else 1.0
        chunk["intensity"] = np.round(np.clip((values - low) / span, 0, 1) * 65535)
    for key, name in {**COLOURS, **GRID}.items():
        if key in data and name in dtype.names:
            chunk[name] = data[key]
    from .files import check_finite
    check_finite(path, chunk, lambda point: f"scan {index}, point {point + 1}")  # e.g. a pose that is not finite
    return chunk


@contextmanager
def read_e57(path, chunk_size):
    e57 = open_e57(path)
    count = e57.scan_count
    dtype = scan_fields(path, e57, count)
    if dtype is None:
        raise SourceError(f"{path}: E57 scans with neither cartesian nor spherical coordinates")
    poses = [{"rotation": e57.get_header(i).rotation.tolist(), "translation": e57.get_header(i).translation.tolist()}
             for i in range(count)]
    total = sum(e57.get_header(i).point_count for i in range(count))
    info = StreamInfo(dtype=dtype, source_format="e57", point_count=total,
                      format_facts={"e57": {"scans": count, "poses": poses}})

    def chunks():
        for index in range(count):
            scan = scan_chunk(path, e57, index, dtype)
            for start in range(0, len(scan), chunk_size):
                yield Chunk.of(scan[start:start + chunk_size])

    yield PointStream(info, chunks())

