"""A Cupix facility's georeference, recorded with each sub and never applied.

`GET /facilities/{key}?fields=...,georeference,bearing` gives `georeference` = {epsg_code, x, y, z, lat, lon, alt,
bearing} (x, y, z as text) and the facility's `bearing`. Cupix does not document the frame of x, y, nor how they,
the bearing and a capture's own frame relate, and its one example contradicts itself: `epsg_code` "4326" (degrees)
with x, y that are the Web-Mercator (EPSG:3857) metres of its lat, lon. So the pipeline moves no point by it: it
records what Cupix says, and says so. How a sub is tied to its facility is not documented either: the listing's
`facility` (a Facility in Cupix's OpenAPI schema) gives its key, and `source.cupix` option `facility` names it.
"""
import math

EARTH_RADIUS = 6378137.0  # the sphere of Web-Mercator (EPSG:3857): WGS 84's semi-major axis
WEB_MERCATOR_CODES = ("3857", "900913", "102100", "102113")
COORDINATES = ("x", "y", "z", "lat", "lon", "alt")
UNDOCUMENTED = ("Cupix does not document the frame of x, y (its own example gives epsg_code 4326 with x, y in "
                "Web-Mercator metres), so the points stay in the capture's frame: declare the frame they are in "
                "with the sinks' `crs`")


def facility_key(attributes):
    """The facility key a listing item names (its `facility` mapping's `key`: one printable word), or None.

    >>> facility_key({"facility": {"id": 2848, "key": "sqpa2d"}}), facility_key({"facility": {"id": 2848}})
    ('sqpa2d', None)
    """
    found = (attributes or {}).get("facility")
    key = found.get("key") if isinstance(found, dict) else None
    key = str(key).strip() if isinstance(key, (str, int)) and not isinstance(key, bool) else ""
    return key if key.isprintable() and key and not any(c.isspace() for c in key) else None


def web_mercator(lat, lon):
    """The Web-Mercator (EPSG:3857) metres of a latitude and longitude in degrees.

    >>> web_mercator(37.401877, 127.10695)  # Cupix's documented example: its x, y to the last digit
    (14149480.950286085, 4495272.281606537)
    """
    return (EARTH_RADIUS * math.radians(lon),
            EARTH_RADIUS * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)))


def number(value):
    """A finite number given as a number or as its text (Cupix sends x, y, z as text), else the value as it is."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return value
    try:
        found = float(value)
    except ValueError:
        return value
    return found if math.isfinite(found) else value


def contradiction(georeference):
    """Why x, y cannot be coordinates of the stated EPSG code, when they are the Web-Mercator metres of lat,
    lon (within a metre) and the code is not Web-Mercator's; else None."""
    values = [georeference.get(name) for name in ("x", "y", "lat", "lon")]
    if not all(isinstance(v, float) for v in values) or str(georeference.get("epsg_code")) in WEB_MERCATOR_CODES:
        return None
    x, y, lat, lon = values
    if not (-90 < lat < 90 and -180 <= lon <= 180):
        return None
    mercator = web_mercator(lat, lon)
    if abs(x - mercator[0]) <= 1 and abs(y - mercator[1]) <= 1:
        return (f"x, y are the Web-Mercator (EPSG:3857) metres of lat, lon, not coordinates of EPSG:"
                f"{georeference.get('epsg_code')}")
    return None


def facility_record(key, attributes, given):
    """What is recorded of a facility: its key, where the key came from, its name, its georeference (numbers
    as numbers; None when it has none), `use_georeference`, its bearing, and that nothing was applied."""
    found = attributes.get("georeference")
    georeference = None
    if isinstance(found, dict) and any(found.get(name) is not None for name in (*COORDINATES, "epsg_code")):
        georeference = {"epsg_code": found.get("epsg_code"),
                        **{name: number(found.get(name)) for name in COORDINATES},
                        "bearing": number(found.get("bearing"))}
    record = {"facility": key, "from": "option facility" if given else "the listing's facility.key",
              "name": attributes.get("name"), "georeference": georeference,
              "use_georeference": attributes.get("use_georeference"), "bearing": number(attributes.get("bearing")),
              "applied": False}
    if georeference is not None:
        record["problem"] = contradiction(georeference)
    return record


def described(record):
    """The one log line that says what was recorded of a facility."""
    name = f"facility {record['facility']}" + (f" ({record['name']})" if record.get("name") else "")
    georeference = record["georeference"]
    if georeference is None:
        return f"{name} has no georeference: none is recorded"
    shown = {k: georeference[k] for k in COORDINATES if georeference[k] is not None}
    origin = ", ".join(f"{k} {v}" for k, v in shown.items()) or "no coordinates"
    problem = f"; {record['problem']}" if record.get("problem") else ""
    return (f"{name}: georeference recorded, not applied: epsg_code {georeference['epsg_code']}, origin {origin}, "
            f"bearing {record['bearing']}{problem}; {UNDOCUMENTED}")
