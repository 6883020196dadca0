"""The `crs` option that sink.las and sink.ply share: `keep` (the input's), `none`, an EPSG code (compound ones
too, `EPSG:25832+7837`) or WKT, checked before any I/O. How a format writes it is its own (stages/las/crs.py,
the `comment crs` line of stages/ply.py)."""
import functools
import re

from pipeline.errors import OptionError
from pipeline.imports import require

KEYWORDS = ("keep", "none")
EPSG = re.compile(r"EPSG:(\d+)(?:\+(\d+))?", re.IGNORECASE)
WKT_STARTS = ("PROJCS[", "GEOGCS[", "GEOCCS[", "COMPD_CS[", "VERT_CS[", "PROJCRS[", "GEOGCRS[", "GEODCRS[",
              "COMPOUNDCRS[", "VERTCRS[", "BOUNDCRS[")
HELP = "the coordinate system the file declares: keep (the input's), none, an EPSG code (EPSG:25832, " \
       "EPSG:25832+7837) or WKT"


def check_option(value):
    """Checks the option's value: keep, none, or a coordinate system pyproj knows (imported only then, so that
    the default costs nothing)."""
    text = str(value).strip()
    if text in KEYWORDS:
        return
    shown = short(text)
    if not (EPSG.fullmatch(text) or text.upper().startswith(WKT_STARTS)):
        raise OptionError(f"expected keep, none, an EPSG code such as EPSG:25832 or EPSG:25832+7837, or WKT, got "
                          f"{shown}", "crs")
    try:
        parsed(text)
    except Exception as error:  # pyproj.exceptions.CRSError, and whatever PROJ makes of odd WKT
        raise OptionError(f"{shown} is not a coordinate system PROJ knows ({proj_reason(error)})", "crs") from None


def proj_reason(error):
    """The gist of a pyproj error, without the repetition around it.

    >>> proj_reason(ValueError("Invalid projection: EPSG:9: (Internal Proj Error: proj_create: crs not found: EPSG:9)"))
    'crs not found: EPSG:9'
    """
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    found = re.search(r"\(Internal Proj Error: (?:proj_create: )?(.*)\)$", text)
    return found[1] if found else text


def short(text, width=40):
    """`text` quoted for a message, cut after `width` characters."""
    return repr(text[:width] + "..." if len(text) > width else text)


@functools.lru_cache(maxsize=16)
def parsed(value):
    """The pyproj CRS of an option's EPSG code or WKT (checked by check_option)."""
    pyproj = require("pyproj", "the `crs` option")
    return pyproj.CRS.from_user_input(str(value).strip())


def declared_text(value):
    """How a text header (a PLY comment) declares the option's CRS, on one line: the EPSG code as
    `EPSG:n[+m]`, or the WKT as given, its line breaks and runs of spaces made single spaces.

    >>> declared_text("epsg:25832+7837"), declared_text('GEOGCS["WGS 84",\\n    DATUM["WGS_1984"]]')
    ('EPSG:25832+7837', 'GEOGCS["WGS 84", DATUM["WGS_1984"]]')
    """
    text = str(value).strip()
    code = EPSG.fullmatch(text)
    if code:
        return f"EPSG:{code[1]}" + (f"+{code[2]}" if code[2] else "")
    return " ".join(text.split())
