"""The coordinate system a LAS output declares (`sink.las` option `crs`, checked in stages/crs.py): the input's
records, none, or one given as an EPSG code or WKT, written as LAS 1.4 asks: an OGC WKT1 record and the
global-encoding WKT bit for point formats 6-10, GeoTIFF keys for formats 0-5."""
import struct

from pipeline.errors import PipelineError, SinkError

from .header import stored_records

PROJECTION = "LASF_Projection"
CRS_RECORD_IDS = (34735, 34736, 34737, 2112)  # GeoTIFF keys, their doubles, their text; OGC WKT
WKT_RECORD = 2112
# GeoTIFF keys (GeoTIFF 1.0 specification): model type, raster type, and the codes of the coordinate systems
MODEL_TYPE, RASTER_TYPE, GEOGRAPHIC_TYPE, PROJECTED_TYPE, VERTICAL_TYPE = 1024, 1025, 2048, 3072, 4096
MODEL_PROJECTED, MODEL_GEOGRAPHIC, RASTER_PIXEL_IS_AREA = 1, 2, 1


def records_for(crs, point_format, where):
    """The VLRs (user id, record id, description, bytes) that declare `crs` for a point format, and whether
    the WKT bit must be set."""
    if point_format >= 6:
        wkt = crs.to_wkt(version="WKT1_GDAL")  # OGC WKT1 (LAS 1.4 allows no WKT2)
        if not wkt.isascii():
            raise SinkError(f"{where}: crs {crs.name!r}: its WKT1 holds characters that are not ASCII, which LAS "
                            "cannot hold")
        return [(PROJECTION, WKT_RECORD, "OGC WKT", wkt.encode("ascii") + b"\0")], True
    keys = geotiff_keys(crs)
    if keys is None:
        raise SinkError(f"{where}: crs {crs.name!r} has no EPSG code, so point format {point_format} (GeoTIFF keys) "
                        "cannot declare it: give an EPSG code, or write LAS 1.4 from an input of point format 6 to 10 "
                        "(OGC WKT)")
    values = [1, 1, 0, len(keys)] + [number for key, value in keys for number in (key, 0, 1, value)]
    return [(PROJECTION, 34735, "GeoTIFF GeoKeyDirectoryTag", struct.pack(f"<{len(values)}H", *values))], False


def geotiff_keys(crs):
    """[(key, value)] declaring `crs` by its EPSG codes (horizontal, and vertical when compound), or None."""
    parts = crs.sub_crs_list if crs.is_compound else [crs]
    keys = [(RASTER_TYPE, RASTER_PIXEL_IS_AREA)]
    for part in parts:
        code = part.to_epsg()
        if code is None or code > 65535:
            return None
        if part.is_projected:
            keys += [(MODEL_TYPE, MODEL_PROJECTED), (PROJECTED_TYPE, code)]
        elif part.is_geographic:
            keys += [(MODEL_TYPE, MODEL_GEOGRAPHIC), (GEOGRAPHIC_TYPE, code)]
        elif part.is_vertical:
            keys.append((VERTICAL_TYPE, code))
        else:
            return None
    return sorted(keys)


def is_crs_record(vlr):
    """A record that declares a CRS: LASF_Projection's, or the copy of the WKT that libLAS wrote."""
    return (vlr.user_id == PROJECTION and vlr.record_id in CRS_RECORD_IDS
            or (vlr.user_id, vlr.record_id) == ("liblas", WKT_RECORD))


def crs_records(facts):
    """The CRS records of an input (LASF_Projection VLRs and EVLRs), as (record id, bytes), in order."""
    stored = stored_records(facts["header"], extended=False)
    stored += stored_records(facts["evlrs"], extended=True, count=facts["evlr_count"])
    return tuple((record_id, data) for user_id, record_id, _, data in stored
                 if user_id == PROJECTION and record_id in CRS_RECORD_IDS)


def crs_name(records):
    """A short name for CRS records: `EPSG:n` (+ its vertical code) from GeoTIFF keys, the start of a WKT,
    or `no CRS`."""
    for record_id, data in records:
        if record_id == 2112:
            text = data.split(b"\0", 1)[0].decode("ascii", "replace")
            return "WKT " + (text[:50] + "..." if len(text) > 50 else text)
    for record_id, data in records:
        if record_id == 34735 and len(data) >= 8:
            keys = struct.unpack_from(f"<{len(data) // 2}H", data)
            codes = {keys[i]: keys[i + 3] for i in range(4, len(keys) - 3, 4) if keys[i + 1] == 0}
            main = codes.get(PROJECTED_TYPE) or codes.get(GEOGRAPHIC_TYPE)
            if main:
                vertical = codes.get(VERTICAL_TYPE)
                return f"EPSG:{main}" + (f"+{vertical}" if vertical else "")
            return "GeoTIFF keys"
    return "no CRS"


def crs_text(records):
    """How another format (a PLY comment) declares the CRS of these records: the whole WKT on one line, else
    the EPSG codes of the GeoTIFF keys; None when there is none to give."""
    for record_id, data in records:
        if record_id == WKT_RECORD:
            text = " ".join(data.split(b"\0", 1)[0].decode("ascii", "replace").split())
            return text if text.isascii() and text.isprintable() else None  # a PLY header is ASCII
    name = crs_name(records)
    return name if name.startswith("EPSG:") else None


def check_same_crs(label, items, infos):
    """Refuses to merge items whose CRS records (GeoTIFF keys, WKT) differ: the file would declare one for all."""
    first = None
    for item, info in zip(items, infos):
        facts = info.format_facts.get("las")
        found = crs_records(facts) if facts else ()
        if first is None:
            first = (item, found)
        elif found != first[1]:
            raise PipelineError(f"{label}: items {first[0].name!r} ({crs_name(first[1])}) and {item.name!r} "
                                f"({crs_name(found)}) have different coordinate systems; merge items of one CRS, or "
                                "set `crs` to the one the file declares")
