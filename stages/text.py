"""Text point clouds: Leica PTS (a count line, then x y z intensity r g b) and XYZ/TXT columns, streamed."""
import itertools
import logging
import re
from contextlib import contextmanager

from pipeline.errors import SourceError
from pipeline.model import XYZ, PointStream, StreamInfo

log = logging.getLogger(__name__)

# what a column count means when nothing names the columns
BY_COUNT = {
    3: ("x", "y", "z"),
    4: ("x", "y", "z", "intensity"),
    6: ("x", "y", "z", "red", "green", "blue"),
    7: ("x", "y", "z", "intensity", "red", "green", "blue"),
}
ALIASES = {"r": "red", "g": "green", "b": "blue", "i": "intensity", "class": "classification",
           "normal_x": "nx", "normal_y": "ny", "normal_z": "nz"}
INTEGER_FIELDS = {"red": "u2", "green": "u2", "blue": "u2", "intensity": "u2", "classification": "u1",
                  "return_number": "u1", "number_of_returns": "u1", "point_source_id": "u2", "user_data": "u1"}
PTS_INTENSITY_SHIFT = 2048  # Leica's -2048..2047 moved into LAS's unsigned range, reversibly
SKIP = "_"
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|inf)$", re.IGNORECASE)


BOM = b"\xef\xbb\xbf"


def is_text(head: bytes):
    """True for the first bytes of a text file: printable UTF-8 (a byte-order mark allowed, as Excel writes)."""
    head = head.removeprefix(BOM)
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(head) - 4:  # not a character cut at the end of the sample
            return False
        text = head[:error.start].decode("utf-8")
    return all(c.isprintable() or c in "\r\n\t" for c in text)


def is_pts(head: bytes):
    """A PTS file starts with a line holding one integer: the point count."""
    first = next((line.split() for line in head.removeprefix(BOM).decode("utf-8", "replace").splitlines()
                  if line.strip()), [])
    return len(first) == 1 and first[0].isdigit()


def column_name(raw):
    name = re.sub(r"[^0-9A-Za-z_]+", "_", raw.strip().lstrip("/#")).strip("_")
    lowered = name.lower()
    if lowered in ("x", "y", "z"):
        return lowered
    return ALIASES.get(lowered, lowered if lowered in INTEGER_FIELDS else name)


def chunk_dtype(columns):
    import numpy as np
    if any(axis not in columns for axis in ("x", "y")):
        raise ValueError(f"columns {list(columns)} need at least x and y")
    fields = [(axis, "f8") for axis in XYZ]
    fields += [(name, INTEGER_FIELDS.get(name, "f8")) for name in columns if name not in XYZ and name != SKIP]
    return np.dtype(fields)


def split_line(line, delimiter):
    return line.split(delimiter) if delimiter else line.split()


class TextTable:
    """Streams rows of numbers from a text file: comments and count lines skipped, line numbers kept."""

    def __init__(self, path, columns, delimiter, dtype, pts, header=None):
        self.path, self.columns, self.delimiter, self.dtype, self.pts = path, columns, delimiter, dtype, pts
        self.header = header  # a header line naming the columns, skipped where it stands

    def rows(self, handle, chunk_size):
        batch, numbers = [], []
        block = None  # PTS: [line of the count, count promised, points seen]
        for number, line in enumerate(handle, start=1):
            stripped = line.strip()
            if not stripped or stripped.startswith(("#", "//")):
                continue
            if self.header is not None and stripped == self.header:
                self.header = None
                continue
            words = split_line(stripped, self.delimiter)
            if self.pts and len(words) == 1 and words[0].isdigit():
                self.check_block(block)
                block = [number, int(words[0]), 0]
                continue
            if block:
                block[2] += 1
            batch.append(words)
            numbers.append(number)
            if len(batch) == chunk_size:
                yield self.convert(batch, numbers)
                batch, numbers = [], []
        self.check_block(block)
        if batch:
            yield self.convert(batch, numbers)

    def check_block(self, block):
        if block and block[1] != block[2]:
            log.warning("%s: line %d says %d points but %d follow; reading %d", self.path, block[0], block[1],
                        block[2], block[2])

    def convert(self, batch, numbers):
        import numpy as np
        width = len(self.columns)
        for words, number in zip(batch, numbers):
            if len(words) != width:
                raise SourceError(f"{self.path}: line {number}: expected {width} values ({' '.join(self.columns)}), "
                                  f"got {len(words)}")
        try:
            table = np.array(batch, dtype=np.float64)
        except ValueError:
            for words, number in zip(batch, numbers):
                bad = next((w for w in words if not NUMBER.match(w.strip())), None)
                if bad is not None:
                    raise SourceError(f"{self.path}: line {number}: {bad.strip()!r} is not a number") from None
            raise
        self.check_coordinates(table, batch, numbers)
        chunk = np.zeros(len(batch), self.dtype)
        for column, name in enumerate(self.columns):
            if name == SKIP:
                continue
            values = table[:, column]
            if self.pts and name == "intensity":
                values = values + PTS_INTENSITY_SHIFT
            target = self.dtype[name]
            if target.kind in "iu":
                limits = np.iinfo(target)
                bad = ~((values == np.floor(values)) & (values >= limits.min) & (values <= limits.max))
                if bad.any():
                    index = int(np.argmax(bad))
                    raw = table[index, column]
                    raise SourceError(f"{self.path}: line {numbers[index]}: {name} {raw:g} is not an integer that fits "
                                      f"{target}; name the columns with the `columns` option to read it as another "
                                      "attribute")
            chunk[name] = values
        return chunk


    def check_coordinates(self, table, batch, numbers):
        """x, y, z must be finite numbers (`nan`, `inf` and `1e999` parse, but make no point)."""
        from .files import first_non_finite
        columns = {axis: table[:, self.columns.index(axis)] for axis in XYZ if axis in self.columns}
        found = first_non_finite(columns)
        if found is not None:
            index, axis = found
            word = batch[index][self.columns.index(axis)].strip()
            raise SourceError(f"{self.path}: line {numbers[index]}: {axis} {word} is not a finite number")


def sniff_layout(path, columns_option):
    """Reads the first lines: is there a header naming the columns, what separates values, how many are there."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        head = [line.strip() for line in itertools.islice(handle, 50)]
    lines = [line for line in head if line]
    pts = bool(lines) and len(lines[0].split()) == 1 and lines[0].isdigit()
    data = [line for line in lines[1 if pts else 0:] if not line.startswith(("#", "//"))]
    header = None
    comment_header = next((line for line in lines if line.startswith("//")), None)
    if data and not all(NUMBER.match(w.strip()) for w in re.split(r"[,;\s]+", data[0]) if w.strip()):
        header, data = data[0], data[1:]
    elif comment_header and not pts:  # CloudCompare writes `//X,Y,Z,R,G,B`
        header = comment_header
    sample = data[0] if data else (header or "").lstrip("/#")
    delimiter = "," if "," in sample else ";" if ";" in sample else None
    width = len(split_line(data[0], delimiter)) if data else None  # no point at all: an empty cloud
    if columns_option:
        columns = [column_name(c) if c != SKIP else SKIP for c in columns_option]
    elif header:
        columns = [column_name(c) for c in (header.lstrip("/#").split(delimiter) if delimiter else header.lstrip("/#").split())]
    elif width is None or width in BY_COUNT:
        columns = list(BY_COUNT[width or 3])
    else:
        columns = ["x", "y", "z"] + [f"column_{i}" for i in range(3, width)]
    if width is not None and len(columns) != width:
        raise SourceError(f"{path}: {len(columns)} column names ({' '.join(columns)}) for {width} values per line")
    if len(set(columns) - {SKIP}) != len([c for c in columns if c != SKIP]):
        raise SourceError(f"{path}: repeated column names: {' '.join(columns)}")
    return pts, columns, delimiter, header if header and not header.startswith(("#", "//")) else None


def pts_count(path):
    with open(path, "rb") as handle:
        first = handle.readline().removeprefix(BOM).split()
    return int(first[0]) if len(first) == 1 and first[0].isdigit() else None


@contextmanager
def read_text(path, chunk_size, columns_option=None):
    """Opens a PTS or XYZ/TXT file as a point stream."""
    pts, columns, delimiter, header = sniff_layout(path, columns_option)
    try:
        dtype = chunk_dtype(columns)
    except ValueError as error:
        raise SourceError(f"{path}: {error}") from error
    if "z" not in columns:
        log.warning("%s: no z column; z is set to 0", path)
    table = TextTable(path, columns, delimiter, dtype, pts, header)
    facts = {"text": {"format": "pts" if pts else "xyz", "columns": columns}}
    info = StreamInfo(dtype=dtype, source_format="pts" if pts else "xyz",
                      point_count=pts_count(path) if pts else None, format_facts=facts)
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        yield PointStream(info, table.rows(handle, chunk_size))
