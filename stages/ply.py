"""PLY: a streaming reader for ascii and binary files (vertices only) and `sink.ply`."""
import hashlib
import itertools
import logging
import math
import os
import re
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

from pipeline import __version__
from pipeline.errors import OptionError, SinkError, SourceError
from pipeline.chunk import Chunk
from pipeline.model import XYZ, PointStream, StreamInfo
from pipeline.options import Option, boolean, choice, template, text, xyz_numbers
from pipeline.stage import Sink, Writer

from .crs import HELP as CRS_HELP, check_option as check_crs, declared_text, short
from .files import check_finite, first_non_finite
from .las import choose_offset
from .las.crs import check_same_crs, crs_records, crs_text

log = logging.getLogger(__name__)

TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
PLY_NAME = {"i1": "char", "u1": "uchar", "i2": "short", "u2": "ushort",
            "i4": "int", "u4": "uint", "f4": "float", "f8": "double"}
ALIASES = {"diffuse_red": "red", "diffuse_green": "green", "diffuse_blue": "blue"}
FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
MAX_HEADER = 1 << 20
END_HEADER = re.compile(rb"(?:^|\n)(end_header)[ \t\r]*(?:\n|$)")  # a line of its own


@dataclass
class Element:
    name: str
    count: int
    properties: list = field(default_factory=list)  # (name, numpy type) or (name, ("list", count type, item type))

    @property
    def has_lists(self):
        return any(isinstance(kind, tuple) for _, kind in self.properties)


@dataclass
class PlyHeader:
    format: str
    elements: list
    length: int  # bytes up to and including end_header's newline
    comments: list
    lines: int = 0  # lines up to and including end_header's, for the line numbers of ascii data

    @property
    def vertex(self):
        return next((e for e in self.elements if e.name == "vertex"), None)


def ascii_name(where, what, name):
    """An element or property name, which PLY keeps to printable ASCII (a byte beyond it is read as U+FFFD)."""
    if not (name.isascii() and name.isprintable()):
        raise SourceError(f"{where}: {what} name {ascii(name)} is not printable ASCII")
    return name


def parse_header(path) -> PlyHeader:
    with open(path, "rb") as handle:
        data = handle.read(MAX_HEADER)
    if not data.startswith(b"ply"):
        raise SourceError(f"{path}: not a PLY file (no 'ply' signature)")
    found = END_HEADER.search(data)
    if found is None:
        raise SourceError(f"{path}: PLY header has no end_header line in its first {MAX_HEADER} bytes")
    end, length = found.start(1), found.end()
    lines = data[:end].decode("ascii", errors="replace").splitlines()
    file_format, elements, comments = None, [], []
    for number, line in enumerate(lines[1:], start=2):
        words = line.split()
        if not words or words[0] in ("obj_info",):
            continue
        where = f"{path}: PLY header line {number}"
        if words[0] == "comment":
            comments.append(line.strip()[len("comment"):].strip())
        elif words[0] == "format":
            if len(words) < 2 or words[1] not in FORMATS:
                raise SourceError(f"{where}: unknown format {' '.join(words[1:])!r}")
            file_format = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise SourceError(f"{where}: expected 'element NAME COUNT', got {line.strip()!r}")
            elements.append(Element(ascii_name(where, "element", words[1]), int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise SourceError(f"{where}: property before any element")
            if len(words) == 5 and words[1] == "list" and words[2] in TYPES and words[3] in TYPES:
                elements[-1].properties.append((ascii_name(where, "property", words[4]),
                                                ("list", TYPES[words[2]], TYPES[words[3]])))
            elif len(words) == 3 and words[1] in TYPES:
                elements[-1].properties.append((ascii_name(where, "property", words[2]), TYPES[words[1]]))
            else:
                raise SourceError(f"{where}: unsupported property {line.strip()!r}")
            if [name for name, _ in elements[-1].properties].count(elements[-1].properties[-1][0]) > 1:
                raise SourceError(f"{where}: property {elements[-1].properties[-1][0]!r} appears twice in element "
                                  f"{elements[-1].name!r}")
        else:
            raise SourceError(f"{where}: unexpected {words[0]!r}")
    if file_format is None:
        raise SourceError(f"{path}: PLY header has no format line")
    header = PlyHeader(file_format, elements, length, comments, data[:length].count(b"\n"))
    vertex = header.vertex
    if vertex is None:
        raise SourceError(f"{path}: PLY file has no vertex element")
    names = [name for name, _ in vertex.properties]
    missing = [axis for axis in ("x", "y") if axis not in names]
    if missing:
        raise SourceError(f"{path}: PLY vertex element has no {', '.join(missing)} property")
    if vertex.has_lists:
        raise SourceError(f"{path}: PLY vertex element has list properties, which point clouds do not use")
    return header


def vertex_layout(header):
    """The file's vertex record dtype and the chunk dtype (x, y, z as float64 first)."""
    import numpy as np
    order = FORMATS[header.format] or "<"
    properties = header.vertex.properties
    file_dtype = np.dtype([(name, order + kind) for name, kind in properties])
    renamed = {name: ALIASES.get(name, name) for name, _ in properties}
    if len(set(renamed.values())) < len(renamed):
        renamed = {name: name for name, _ in properties}
    fields = [(axis, "f8") for axis in XYZ]
    fields += [(renamed[name], "<" + kind if kind != "u1" and kind != "i1" else kind)
               for name, kind in properties if name not in XYZ]
    return file_dtype, np.dtype(fields), renamed


class PlyLayout:
    """How the columns of a chunk are decoded from its PLY vertex records (Chunk.layout)."""

    kind = "ply"

    def __init__(self, renamed):
        self.property_of = {ours: theirs for theirs, ours in renamed.items()}

    def decode(self, records, name, wanted):
        import numpy as np
        with np.errstate(invalid="ignore"):  # a signalling NaN becomes a quiet one
            return records[self.property_of[name]].astype(wanted.base)


def vertex_chunk(records, chunk_dtype, layout):
    """The chunk of some vertex records: x, y, z as float64 (z 0 when the file has none), the rest decoded
    when asked for."""
    import numpy as np
    xyz = np.zeros((3, len(records)))
    with np.errstate(invalid="ignore"):  # a signalling NaN becomes a quiet one (coordinates are checked after)
        for row, axis in zip(xyz, XYZ):
            if axis in records.dtype.names:
                row[...] = records[axis]
    return Chunk(xyz, chunk_dtype, records=records, layout=layout)


def _vertex_offset(path, header):
    import numpy as np
    offset = header.length
    for element in header.elements:
        if element.name == "vertex":
            return offset
        if element.has_lists:
            raise SourceError(f"{path}: PLY element {element.name!r} with list properties comes before the vertices")
        order = FORMATS[header.format]
        offset += element.count * np.dtype([(n, order + k) for n, k in element.properties]).itemsize
    raise AssertionError("vertex element checked by parse_header")


def short_file(path, promised, held, truncated):
    """A file holding fewer vertices than its header promises: an error, or with `truncated: read` a warning."""
    if truncated != "read":
        raise SourceError(f"{path}: PLY header promises {promised} vertices but the file holds {held} "
                          "(`truncated: read` reads what is there)")
    log.warning("%s: PLY header promises %d vertices but the file holds %d; reading %d", path, promised, held, held)


def _available_vertices(path, header, file_dtype):
    """Where the binary vertices start, and how many the file holds."""
    offset = _vertex_offset(path, header)
    return offset, max(0, os.path.getsize(path) - offset) // file_dtype.itemsize


def _binary_chunks(path, header, file_dtype, chunk_dtype, layout, chunk_size, truncated="error"):
    import numpy as np
    offset, available = _available_vertices(path, header, file_dtype)
    count = header.vertex.count
    if available < count:
        short_file(path, count, available, truncated)
        count = available
    with open(path, "rb") as handle:
        handle.seek(offset)
        for start in range(0, count, chunk_size):
            n = min(chunk_size, count - start)
            chunk = vertex_chunk(np.fromfile(handle, dtype=file_dtype, count=n), chunk_dtype, layout)
            check_finite(path, chunk, lambda index: f"vertex {start + index + 1}")
            yield chunk


def words_per_line(lines):
    r"""How many words (what bytes.split() finds) each of these lines holds, counted without a loop over them.

    >>> words_per_line([b"1 2  3\n", b"\t4 5\n", b"6"]).tolist()
    [3, 2, 1]
    """
    import numpy as np
    text = np.frombuffer(b"".join(lines), np.uint8)
    space = np.isin(text, (9, 10, 11, 12, 13, 32))
    starts = ~space
    starts[1:] &= space[:-1]
    newline = text == 10
    line_of = np.cumsum(newline) - newline  # the newline ending a line belongs to it
    return np.bincount(line_of[starts], minlength=len(lines))


def _ascii_table(path, lines, file_dtype, first_line):
    """The values of ascii vertex lines as a (lines, properties) float64 table; a line of the wrong width, a
    word that is not a number, or a value its property's type cannot hold is an error naming the line."""
    import numpy as np

    names, width = file_dtype.names, len(file_dtype.names)
    counts = words_per_line(lines)
    if (counts != width).any():  # (the total alone would let a short line and a long one pass, shifted)
        index = int(np.argmax(counts != width))
        raise SourceError(f"{path}: line {first_line + index}: expected {width} values, got {counts[index]}")
    words = b" ".join(lines).split()
    try:
        table = np.array(words, dtype=np.float64).reshape(len(lines), width)
    except ValueError:
        for index, word in enumerate(words):
            try:
                float(word)
            except ValueError:
                line, column = divmod(index, width)
                raise SourceError(f"{path}: line {first_line + line}: {names[column]} "
                                  f"{word.decode('ascii', 'replace')!r} is not a number") from None
        raise
    for column, name in enumerate(names):
        kind, values = file_dtype[name], table[:, column]
        if kind.kind in "iu":
            limits = np.iinfo(kind)
            bad = ~((values >= limits.min) & (values <= limits.max) & (values == np.floor(values)))
        elif kind.itemsize == 4:  # a finite value beyond float's range would become infinite
            bad = np.isfinite(values) & (np.abs(values) > np.finfo(np.float32).max)
        else:
            continue
        if bad.any():
            index = int(np.argmax(bad))
            word = lines[index].split()[column].decode("ascii", "replace")
            raise SourceError(f"{path}: line {first_line + index}: {name} {word} does not fit its PLY type "
                              f"{PLY_NAME[kind.str.lstrip('<>|=')]}")
    coordinates = {axis: table[:, names.index(axis)] for axis in XYZ if axis in names}
    found = first_non_finite(coordinates)
    if found is not None:
        index, axis = found
        word = lines[index].split()[names.index(axis)].decode("ascii", "replace")
        raise SourceError(f"{path}: line {first_line + index}: {axis} {word} is not a finite number")
    return table


def _ascii_chunks(path, header, file_dtype, chunk_dtype, layout, chunk_size, truncated="error"):
    import numpy as np
    with open(path, "rb") as handle:
        handle.seek(header.length)
        first_line = header.lines + 1  # the line of the first vertex
        for element in header.elements:
            if element.name == "vertex":
                break
            deque(itertools.islice(handle, element.count), maxlen=0)  # one line each; stops at the end of the file
            first_line += element.count
        count = header.vertex.count
        for start in range(0, count, chunk_size):
            n = min(chunk_size, count - start)
            lines = list(itertools.islice(handle, n))
            short = len(lines) < n
            if short:  # the file ends early; a last line without its newline may have been cut: it is not read
                if lines and not lines[-1].endswith(b"\n"):
                    lines.pop()
                short_file(path, count, start + len(lines), truncated)
            if lines:
                table = _ascii_table(path, lines, file_dtype, first_line + start)
                records = np.empty(len(lines), file_dtype)
                for column, name in enumerate(file_dtype.names):
                    records[name] = table[:, column]
                yield vertex_chunk(records, chunk_dtype, layout)
            if short:
                return


@contextmanager
def read_ply(path, chunk_size, truncated="error"):
    """Opens a PLY file as a point stream; `truncated` says what a file holding fewer vertices than its header
    promises is: an error, or `read` as it is (binary files: known up front; ascii: at their end)."""
    header = parse_header(path)
    if "z" not in [name for name, _ in header.vertex.properties]:
        log.warning("%s: PLY vertices have no z property; z is set to 0", path)
    file_dtype, chunk_dtype, renamed = vertex_layout(header)
    count = header.vertex.count
    if header.format == "ascii":
        read = _ascii_chunks
    else:
        read = _binary_chunks
        count = min(count, _available_vertices(path, header, file_dtype)[1])
    info = StreamInfo(dtype=chunk_dtype, source_format="ply", point_count=count,
                      format_facts={"ply": {"format": header.format, "comments": header.comments}})
    chunks = read(path, header, file_dtype, chunk_dtype, PlyLayout(renamed), chunk_size, truncated)
    offset = written_offset(header.comments)
    if offset is not None:  # x, y, z were stored relative to it (sink.ply `offset`, CloudCompare's shift)
        if not all(map(math.isfinite, offset)):
            comment = next(c for c in header.comments if c.split()[:1] == ["offset"] and len(c.split()) == 4)
            raise SourceError(f"{path}: PLY header comment {comment!r} holds a value that is not finite")
        chunks = shifted(path, chunks, offset)
    try:
        yield PointStream(info, chunks)
    finally:
        chunks.close()  # its open file, when the consumer stopped early


def written_offset(comments):
    """The [x, y, z] of a `comment offset X Y Z` header line, or None.

    >>> written_offset(["written by cupix-pipeline", "offset 500000.0 4000000.0 50.0"])
    [500000.0, 4000000.0, 50.0]
    """
    for comment in comments:
        words = comment.split()
        if len(words) == 4 and words[0] == "offset":
            try:
                return [float(v) for v in words[1:]]
            except ValueError:
                return None
    return None


def shifted(path, chunks, offset):
    """The chunks with the offset added to x, y, z (which must stay finite)."""
    import numpy as np
    done = 0
    for chunk in chunks:
        chunk = chunk.moved(chunk.xyz + np.asarray(offset, dtype=np.float64)[:, None])
        check_finite(path, chunk, lambda index: f"vertex {done + index + 1}")
        done += len(chunk)
        yield chunk



NORMALS = {"normal_x": "nx", "normal_y": "ny", "normal_z": "nz"}  # what open3d, CloudCompare, MeshLab read


def ply_properties(dtype):
    """(property name, numpy type) for each column a chunk dtype becomes; arrays become name_0, name_1, ...;
    normal_x, normal_y, normal_z (transform.normals) become nx, ny, nz, unless the points have those already."""
    import numpy as np
    renamed = {} if set(NORMALS.values()) & set(dtype.names) else NORMALS
    columns = []
    for name in dtype.names:
        field_dtype = dtype[name]
        base, shape = field_dtype.subdtype if field_dtype.subdtype else (field_dtype, ())
        code = base.str.lstrip("<>|=")
        if code not in PLY_NAME:
            code = "f8"  # 64-bit integers: PLY has no such type
        names = [renamed.get(name, name)] if not shape else [f"{name}_{i}" for i in range(int(np.prod(shape)))]
        columns += [(column, code) for column in names]
    return columns


COLOURS = ("red", "green", "blue", "alpha")


class ColourDepth:
    """Writes colours as uchar, which viewers expect (open3d divides every colour by 255).

    16-bit colours (LAS) are divided by 257 when they use the 16-bit range and copied when they hold
    8-bit values, as many LAS files do; `auto` tells which from the item's first chunk.
    """

    def __init__(self, mode, where):
        self.mode, self.where, self.decided = mode, where, None

    def decide(self, chunk):
        """Fixes the depth for the item from its first chunk, looking at every colour channel."""
        import numpy as np
        if self.decided is None:
            present = [chunk[c] for c in COLOURS if c in chunk.dtype.names and chunk[c].dtype != np.uint8]
            high = max((int(v.max(initial=0)) for v in present), default=0)
            self.decided = self.mode if self.mode != "auto" else ("8bit" if high <= 255 else "16bit")

    def convert(self, name, values):
        import numpy as np
        if values.dtype == np.uint8 or self.mode == "keep":
            return values
        if values.dtype.kind == "f":  # colours as fractions (0..1) or as float 0..255
            if len(values) and values.min() >= 0 and values.max() <= 1:
                return np.round(values * 255).astype(np.uint8)
            if len(values) and not (np.all(values == np.round(values)) and 0 <= values.min() and values.max() <= 255):
                raise SinkError(f"{self.where}: {name} has float values {values.min()}..{values.max()} that are "
                                "neither fractions of 1 nor whole numbers up to 255")
            return values.astype(np.uint8)
        if self.decided == "16bit":
            if values.dtype != np.uint16 and len(values):
                low, high = values.min(), values.max()
                if low < 0 or high > 65535:
                    raise SinkError(f"{self.where}: {name} value {high if high > 65535 else low} does not fit 16 bits")
            # round(v / 257) in integers, exactly: v / 257 is never halfway between two integers (257 is odd)
            wide = values.astype(np.uint32)
            wide += 128
            wide //= 257
            return wide.astype(np.uint8)
        if values.max(initial=0) > 255 or values.min(initial=0) < 0:
            hint = " (auto chose 8-bit from the first chunk: set `colors: 16bit`)" if self.mode == "auto" else ""
            raise SinkError(f"{self.where}: {name} value {values.max()} does not fit 8 bits{hint}")
        return values.astype(np.uint8)


class PlyWriter(Writer):
    """Streams vertices; the count is written into the header when the file is closed."""

    PAD = 20

    def __init__(self, sink, item, info, temp, hashing=True):
        import numpy as np
        self.where = f"{sink.label}: {item.name}"
        self.temp, self.ascii = temp, sink.options["ascii"]
        self.offset = self.choose_offset(sink.options["offset"], info)
        self.crs = self.declared_crs(sink.options["crs"], info)
        self.colours = ColourDepth(sink.options["colors"], self.where)
        self.dtype = dtype = info.dtype
        self.las_plans = {}  # how a chunk's LAS records fill our records (see copy_las_fields)
        self.columns = ply_properties(dtype)
        if self.offset is not None:
            self.columns = [(name, "f4" if name in XYZ else code) for name, code in self.columns]
        if sink.options["colors"] != "keep":
            self.columns = [(name, "u1" if name in COLOURS else code) for name, code in self.columns]
        self.count = 0
        self.expected = info.point_count or 0  # the header's count from the start; corrected at close
        self.hashing = hashing and not self.ascii  # ascii lines go through numpy's savetxt
        self.hash = None  # sha256 of the bytes written, kept while the file is written front to back
        self.lossy = [name for name in dtype.names if dtype[name].base.kind in "iu" and dtype[name].base.itemsize == 8]
        self.file_dtype = np.dtype([(name, "<" + code if code not in ("u1", "i1") else code)
                                    for name, code in self.columns])
        self.handle = None  # opened at the first chunk, when an `auto` offset can be known

    def start(self):
        if self.offset == "first chunk":  # no points came
            self.offset = [0.0, 0.0, 0.0]
        self.handle = open(self.temp, "wb")
        header = self.header(self.expected)
        self.hash = hashlib.sha256(header) if self.hashing else None
        self.handle.write(header)

    def declared_crs(self, option, info):
        """What the `comment crs` line declares (see stages/crs.py): with `keep`, a LAS input's coordinate system
        (see las.crs.crs_text); else the option's EPSG code or WKT, or none."""
        if option != "keep":
            return None if option == "none" else declared_text(option)
        facts = info.format_facts.get("las")
        kept = crs_text(crs_records(facts)) if facts else None
        if kept and info.moved:
            log.info("%s: the coordinates were moved; the input's coordinate system (%s) is declared as it was: set "
                     "`crs` to the one they are in now", self.where, kept if len(kept) <= 60 else kept[:57] + "...")
        return kept

    def described(self):
        return {str(self.temp): {"crs": self.crs}} if self.crs else {}

    @staticmethod
    def choose_offset(option, info):
        if option is None:
            return None
        if option != "auto":
            return option
        if info.bounds is None:
            return "first chunk"
        return [float(choose_offset(v, 1.0)) for v in info.bounds.mins]

    def header(self, count):
        lines = ["ply", f"format {'ascii' if self.ascii else 'binary_little_endian'} 1.0",
                 f"comment written by cupix-pipeline {__version__}"]
        if self.offset is not None:
            lines.append("comment offset " + " ".join(repr(v) for v in self.offset))
        if self.crs is not None:
            lines.append(f"comment crs {self.crs}")
        lines.append(f"element vertex {count}")
        lines += [f"property {PLY_NAME[code]} {name}" for name, code in self.columns]
        lines += ["comment" + " " * (self.PAD - len(str(count))), "end_header"]
        return ("\n".join(lines) + "\n").encode("ascii")

    def flatten(self, chunk):
        """The file records of a chunk, and what is left to copy into them: the columns that the chunk's LAS
        records store as the file does, which `copy_las_fields` fills (else None)."""
        import numpy as np
        records = np.empty(len(chunk), self.file_dtype)
        plan = self.las_copies(chunk) if getattr(chunk.layout, "kind", None) == "las" else None
        done = plan[1] if plan else ()
        column = 0
        for name in chunk.dtype.names:
            if name in done:
                column += 1
                continue
            values = chunk[name].reshape(len(chunk), -1)
            for i in range(values.shape[1]):
                column_values = values[:, i]
                if name in XYZ and self.offset is not None:
                    column_values = self.shifted(name, column_values)
                elif name in COLOURS:
                    column_values = self.colours.convert(name, column_values)
                records[self.columns[column][0]] = column_values
                column += 1
        return records, ((plan[0], chunk.records) if plan else None)

    def shifted(self, axis, values):
        """x, y or z minus the offset, as the float the file stores; refused when a value would not fit it
        (it would be written as inf)."""
        import numpy as np
        offset = self.offset[XYZ.index(axis)]
        moved = values - offset
        if len(moved) and not np.abs(moved).max() <= np.finfo(np.float32).max:  # also true for NaN
            raise SinkError(f"{self.where}: {axis} values {values.min()}..{values.max()} minus the offset {offset} "
                            "do not fit the float that `offset` writes; leave `offset` out to write doubles")
        return moved

    def las_copies(self, chunk):
        """How the columns that a chunk's LAS records hold as the file does are filled (see plan_las_copies),
        the same for every chunk of a kind."""
        key = (chunk.records.dtype, chunk.changed)
        if key not in self.las_plans:
            self.las_plans[key] = self.plan_las_copies(chunk)
        return self.las_plans[key]

    @staticmethod
    def copy_las_fields(steps, block, records):
        """Fills those columns of `records` from raw LAS records with one numpy call per run of them:
        fields stored alike are copied as bytes, and the bit fields of one stored byte are looked up in a
        table."""
        import numpy as np
        block = np.ascontiguousarray(block)  # the reader's blocks are: no copy
        ours, theirs = records.view(np.uint8).reshape(len(records), -1), block.view(np.uint8).reshape(len(block), -1)
        for start, size, source in steps:
            target = ours[:, start:start + size].view(f"V{size}")[:, 0]
            if isinstance(source, int):
                target[...] = theirs[:, source:source + size].view(f"V{size}")[:, 0]
            else:
                stored, table = source
                target[...] = table[block[stored]]

    def plan_las_copies(self, chunk):
        """(steps, names): each step is (offset in our record, size, LAS offset or (stored field, table))."""
        import numpy as np
        block_fields, our_fields, layout = chunk.records.dtype.fields, self.file_dtype.fields, chunk.layout
        steps, done = [], set()
        for name in chunk.names:
            if name in XYZ or name in COLOURS or name not in our_fields or chunk.dtype[name].shape \
                    or name in chunk.changed:
                continue
            start, code = our_fields[name][1], our_fields[name][0]
            last = steps[-1] if steps and steps[-1][0] + steps[-1][1] == start else None
            if layout.stored_as_is(chunk.records, name, chunk.dtype[name]) and block_fields[name][0] == code:
                offset = block_fields[name][1]
                if last and isinstance(last[2], int) and last[2] + last[1] == offset:
                    steps[-1] = (last[0], last[1] + code.itemsize, last[2])
                else:
                    steps.append((start, code.itemsize, offset))
            elif name in layout.packed and code == np.uint8:
                stored, mask, shift = layout.packed[name]
                if last and not isinstance(last[2], int) and last[2][0] == stored:
                    steps[-1] = (last[0], last[1] + 1, (stored, last[2][1] + [(mask, shift)]))
                else:
                    steps.append((start, 1, (stored, [(mask, shift)])))
            else:
                continue
            done.add(name)
        every_byte = np.arange(256)
        for index, (start, size, source) in enumerate(steps):
            if not isinstance(source, int):  # a table: each stored byte -> the bytes of its fields
                stored, parts = source
                table = np.stack([(every_byte & mask) >> shift for mask, shift in parts], axis=1).astype(np.uint8)
                steps[index] = (start, size, (stored, table.view(f"V{size}")[:, 0]))
        return steps, done

    def prepare(self, chunk):
        """The file records; the LAS fields are copied here when the writing thread also hashes the file, else
        there, so that both threads have work."""
        import numpy as np
        if not len(chunk):  # a stage may yield an empty chunk (all its points dropped)
            return np.empty(0, self.file_dtype), None
        records, copies = self.records(chunk)
        if copies is not None and self.hashing:
            self.copy_las_fields(*copies, records)
            copies = None
        return records, copies

    def write(self, prepared):
        records, copies = prepared
        if copies is not None:
            self.copy_las_fields(*copies, records)
        self.write_records(records)

    def records(self, chunk):
        """The file records of a chunk and the LAS fields left to copy (see flatten); needs no file."""
        import numpy as np
        if self.offset == "first chunk" and len(chunk):
            self.offset = [float(choose_offset(chunk[a].min(), 1.0)) for a in XYZ]
        for name in self.lossy:
            if len(chunk) and np.abs(chunk[name].astype(np.float64)).max() > 2 ** 53:
                raise SinkError(f"{self.where}: field {name!r} has 64-bit integers that PLY cannot store exactly")
        self.colours.decide(chunk)
        return self.flatten(chunk)

    def write_records(self, records):
        import numpy as np
        if self.handle is None:
            self.start()
        if self.ascii:
            formats = [{"f8": "%.17g", "f4": "%.9g"}.get(code, "%d") for _, code in self.columns]
            np.savetxt(self.handle, records, fmt=formats)
        else:
            data = memoryview(records).cast("B")  # a new contiguous array
            if self.hash is not None:
                self.hash.update(data)
            self.handle.write(data)
        self.count += len(records)

    def close(self):
        if self.handle is None:
            self.start()
        if self.count != self.expected:
            self.handle.seek(0)
            self.handle.write(self.header(self.count))
            self.hash = None
        self.handle.close()

    def checksums(self):
        if self.hash is None:
            return {}
        return {str(self.temp): (os.path.getsize(self.temp), self.hash.hexdigest())}

    def abort(self):
        if self.handle is not None:
            self.handle.close()


class PlySink(Sink):
    """Writes PLY (binary little-endian, or ascii) with x, y, z as double and every attribute kept."""

    options = (
        Option("path", template(), "output path template ending in .ply, e.g. out/{name}.ply"),
        Option("ascii", boolean(), "write ascii instead of binary little-endian", default=False),
        Option("offset", xyz_numbers(keywords=("auto",)), "write x, y, z as float minus this offset (auto: whole "
               "units below the data), recorded in a `comment offset` header line", default=None),
        Option("colors", choice("auto", "8bit", "16bit", "keep"), "how 16-bit colours become uchar: 8bit copies, "
               "16bit divides by 257, auto picks from the first chunk, keep writes ushort", default="auto"),
        Option("crs", text(), CRS_HELP + ", in a `comment crs` header line", default="keep"),
        Option("merge", boolean(), "write every item into one file", default=False),
    )

    @classmethod
    def check(cls, options):
        if not options["path"].lower().endswith(".ply"):
            raise OptionError("expected a path ending in .ply", "path")
        check_crs(options["crs"])
        declared = declared_text(options["crs"])
        if not (declared.isascii() and declared.isprintable()):
            raise OptionError(f"{short(declared)} holds characters that are not printable ASCII, which a PLY header "
                              "cannot hold: give an EPSG code, or WKT1 (pyproj's CRS.to_wkt('WKT1_GDAL'))", "crs")

    def merged_info(self, items, infos):
        """Every attribute of any item; items whose coordinate systems differ are not merged while `crs` keeps
        the input's (the file would declare the first one's for all)."""
        if self.options["crs"] == "keep":
            check_same_crs(self.label, items, infos)
        return super().merged_info(items, infos)

    def open(self, item, info, staging):
        final = self.targets(item)[0]
        return PlyWriter(self, item, info, staging.create(final), hashing=staging.checksums)
