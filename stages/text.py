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


BLOCK = 1 << 20  # bytes read and converted at a time: some 20,000 lines
HEADER_LINES = 50  # sniff_layout finds a header among the first 50 lines
BLANK, DATA, COUNT = 0, 1, 2  # what a line is, for fast_block (comments and the header count as blank)


class Rows:
    """The data rows of one block of lines, in order: their line numbers and either their values, column by
    column (read fast), or their words (read line by line). `problem` marks the rows that the fast checks did
    not pass; a chunk holding one is converted from its words, as before, which gives the exact error."""

    def __init__(self, numbers, delimiter, columns=None, problem=None, text=None, spans=None, words=None):
        self.numbers, self.delimiter, self.columns, self.problem = numbers, delimiter, columns, problem
        self.text, self.spans, self.words = text, spans, words

    def __len__(self):
        return len(self.numbers)

    def clean(self, start, stop):
        return self.columns is not None and (self.problem is None or not self.problem[start:stop].any())

    def words_of(self, start, stop):
        if self.words is not None:
            return self.words[start:stop]
        return [split_line(self.text[a:b].decode("utf-8", "replace").strip(), self.delimiter)
                for a, b in self.spans[start:stop].tolist()]


class TextTable:
    """Streams rows of numbers from a text file: comments and count lines skipped, line numbers kept.

    The file is read in blocks of whole lines. A block of plain ASCII is split into lines and tokens and its
    numbers converted by numpy (text_numbers); one that holds anything else (other bytes in a line that is
    not a comment) is read line by line. Rows are cut into chunks of `chunk_size` as they come; a chunk whose
    rows all passed the fast checks is built from their values, any other from their words by `convert`,
    which raises the error naming the line."""

    def __init__(self, path, columns, delimiter, dtype, pts, header=None):
        self.path, self.columns, self.delimiter, self.dtype, self.pts = path, columns, delimiter, dtype, pts
        self.header = header  # a header line naming the columns, skipped where it stands
        self.block = None  # PTS: [line of the count, count promised, points seen]
        self.seen = 0  # data rows read so far
        self.warnings = []  # (data rows before it, message arguments): logged in order with the chunks
        self.failure = None  # an error met reading a line, raised once the rows before it are converted

    def rows(self, handle, chunk_size):
        """The chunks of the file open as `handle` (binary)."""
        pending, count, done = [], 0, 0
        for rows in self.blocks(handle):
            if len(rows):
                pending.append((rows, 0, len(rows)))
                count += len(rows)
            while count >= chunk_size:
                parts, pending = take(pending, chunk_size)
                self.warn(done + chunk_size)
                yield self.build(parts)
                done, count = done + chunk_size, count - chunk_size
            if self.failure is not None:
                self.warn(None)
                raise self.failure
        self.check_block(self.block)
        self.warn(None)
        if count:
            yield self.build(pending)

    def check_block(self, block):
        if block and block[1] != block[2]:
            self.warnings.append((self.seen, ("%s: line %d says %d points but %d follow; reading %d", self.path,
                                              block[0], block[1], block[2], block[2])))

    def warn(self, before):
        """Logs the warnings of count lines read before row `before` (all: None), as reading line by line
        and converting every `chunk_size` rows would."""
        while self.warnings and (before is None or self.warnings[0][0] < before):
            log.warning(*self.warnings.pop(0)[1])

    def blocks(self, handle):
        """Rows block by block; a block ends at a line break, the rest of the read carried into the next."""
        carry, line, first = b"", 1, True
        while True:
            data = handle.read(BLOCK)
            final = not data
            data = carry + data
            if first and (final or len(data) >= len(BOM)):
                data, first = data.removeprefix(BOM), False
            if final:
                carry = b""
            else:
                # a CR as the last byte may be the first half of a CRLF: cut before it
                cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
                if not cut:
                    carry = data  # no whole line yet
                    continue
                data, carry = data[:cut], data[cut:]
            if data:
                rows, lines = self.read_block(data, line, final)
                line += lines
                yield rows
            if final:
                return

    def read_block(self, data, first_line, final):
        """(the block's data rows, the number of lines it holds)."""
        import numpy as np
        from .text_numbers import PAD

        buffer = np.frombuffer(b" " * PAD + data + b" " * PAD, dtype=np.uint8)
        end = PAD + len(data)
        breaks = np.flatnonzero(buffer == 10)
        control = np.count_nonzero(buffer < 32) > len(breaks)  # tabs, CRs or other control characters
        if control:
            returns = np.flatnonzero(buffer == 13)
            alone = returns[buffer[returns + 1] != 10]  # a CR alone ends a line too
            if len(alone):
                breaks = np.union1d(breaks, alone)
        if final and (not len(breaks) or breaks[-1] != end - 1):
            breaks = np.append(breaks, end)
        rows = self.fast_block(data, buffer, breaks, first_line, control)
        if rows is None:
            rows = self.slow_block(data, first_line)
        return rows, len(breaks)

    def slow_block(self, data, first_line):
        """A block read line by line, as `str` (any text): the rows keep their words."""
        import numpy as np
        words, numbers = [], []
        for number, raw in enumerate(data.splitlines(), start=first_line):  # bytes split at CR, LF, CRLF only
            stripped = raw.decode("utf-8", "replace").strip()
            if not stripped or stripped.startswith(("#", "//")):
                continue
            if self.header is not None and stripped == self.header:
                self.header = None
                continue
            row = split_line(stripped, self.delimiter)
            if self.pts and len(row) == 1 and row[0].isdigit():
                self.check_block(self.block)
                try:
                    self.block = [number, int(row[0]), 0]
                except ValueError as error:  # "²" is a digit int() refuses: fail here, after the rows before it
                    self.failure = error
                    break
                continue
            if self.block:
                self.block[2] += 1
            words.append(row)
            numbers.append(number)
            self.seen += 1
        return Rows(np.array(numbers, dtype=np.int64), self.delimiter, words=words)

    def fast_block(self, data, buffer, breaks, first_line, control):
        """A block of ASCII lines split and converted by numpy, or None when it must be read line by line."""
        import numpy as np
        from .text_numbers import PAD, column_values

        starts_of_lines = np.concatenate(([PAD], breaks[:-1] + 1))
        skip = np.zeros(len(breaks), dtype=bool)  # header and odd comment lines
        header = None
        if self.header is not None:
            header = self.find_header(data, starts_of_lines, breaks, first_line)
            if header is False:
                return None
            if header is not None:
                skip[header] = True
        odd = (buffer >= 128).any() or control and ((buffer < 9) | ((buffer > 13) & (buffer < 28))).any()
        if odd and not self.odd_lines_are_comments(data, buffer, breaks, skip):
            return None
        if header is not None:  # nothing changes before the block is known to be read here
            self.header = None

        tokens = buffer > 32
        delimiter = None
        if self.delimiter:
            delimiter = ord(self.delimiter)
            tokens &= buffer != delimiter
        edges = np.flatnonzero(tokens[1:] != tokens[:-1]) + 1
        starts, ends = edges[0::2], edges[1::2]
        width = len(self.columns)
        uniform = len(starts) == width * len(breaks) and len(starts) and (ends[width - 1::width] <= breaks).all() and (
            starts[width::width] > breaks[:-1]).all()  # each line's `width` tokens before its break, the next after
        if uniform:
            first = np.arange(0, len(starts), width)
            counts = np.full(len(breaks), width)
        else:
            before = np.searchsorted(starts, breaks)  # tokens before each line's end
            counts = np.diff(before, prepend=0)
            first = before - counts  # index of each line's first token
        filled = counts > 0
        irregular = None
        if delimiter is not None:
            filled, irregular = self.delimited(buffer, delimiter, tokens, starts, ends, breaks, counts, filled, uniform)
        kind = np.where(filled, DATA, BLANK).astype(np.int8)
        kind[skip] = BLANK
        if (buffer == 35).any() or (buffer == 47).any():  # "#", "/": maybe comment lines
            lead = np.where(filled, starts[np.minimum(first, len(starts) - 1)] if len(starts) else 0, 0)
            if irregular is not None:
                lead = self.first_byte(buffer, delimiter, breaks, lead, counts)
            comment = filled & ((buffer[lead] == 35) | ((buffer[lead] == 47) & (buffer[lead + 1] == 47)))
            kind[comment] = BLANK
        counted = []
        if self.pts:
            single = (kind == DATA) & (counts == 1)
            if irregular is not None:
                single &= ~irregular
            for index in np.flatnonzero(single).tolist():
                word = buffer[starts[first[index]]:ends[first[index]]].tobytes()
                if word.isdigit():
                    kind[index] = COUNT
                    counted.append((index, int(word)))
        data_lines = np.flatnonzero(kind == DATA)
        self.count_rows(data_lines, counted, first_line)

        regular = counts[data_lines] == width
        if irregular is not None:
            regular &= ~irregular[data_lines]
        problem = ~regular
        if regular.all() and len(data_lines) * width == len(starts):
            token_starts, token_ends = (starts[j::width] for j in range(width)), (ends[j::width] for j in range(width))
        else:
            index = first[data_lines[regular]][:, None] + np.arange(width)
            token_starts, token_ends = (starts[index[:, j]] for j in range(width)), (ends[index[:, j]] for j in range(width))
        columns = {}
        everywhere = bool(regular.all())
        for name, column_starts, column_ends in zip(self.columns, token_starts, token_ends):
            values, ok = column_values(buffer, column_starts, column_ends)
            if everywhere:
                problem |= ~ok
            else:
                problem[regular] |= ~ok
                values, spread = np.zeros(len(data_lines)), values
                values[regular] = spread
            if name != SKIP:
                columns[name] = values
        self.check_values(columns, problem)
        spans = np.stack([starts_of_lines[data_lines] - PAD, breaks[data_lines] - PAD], axis=1)
        return Rows(data_lines + first_line, self.delimiter, columns=columns,
                    problem=problem if problem.any() else None, text=data, spans=spans)

    def check_values(self, columns, problem):
        """Marks the rows that `convert` refuses: a coordinate that is not finite, an integer field that is not
        an integer of its type."""
        import numpy as np
        for name, values in columns.items():
            field = self.dtype.fields.get(name)
            if field is None:  # a header word numpy renamed (""): convert fails as it always did
                problem[:] = True
            elif name in XYZ:
                problem |= ~np.isfinite(values)
            elif field[0].kind in "iu":
                if self.pts and name == "intensity":
                    values = values + PTS_INTENSITY_SHIFT
                limits = np.iinfo(field[0])
                problem |= ~((values == np.floor(values)) & (values >= limits.min) & (values <= limits.max))

    def count_rows(self, data_lines, counted, first_line):
        """Counts the block's rows into the PTS blocks that its count lines open."""
        import numpy as np
        done = 0
        for index, promised in counted:
            upto = int(np.searchsorted(data_lines, index))
            if self.block:
                self.block[2] += upto - done
            self.seen += upto - done
            self.check_block(self.block)
            self.block, done = [first_line + index, promised, 0], upto
        if self.block:
            self.block[2] += len(data_lines) - done
        self.seen += len(data_lines) - done

    def find_header(self, data, starts_of_lines, breaks, first_line):
        """The index of the header line if it is in this block's first lines; None if it may be in the next
        block; False when it cannot be (then the block is read line by line, as always)."""
        from .text_numbers import PAD
        if first_line > HEADER_LINES:
            return False
        for index in range(min(len(breaks), HEADER_LINES + 1 - first_line)):
            line = data[starts_of_lines[index] - PAD:breaks[index] - PAD].decode("utf-8", "replace").strip()
            if line == self.header:
                return index
        return None if first_line + len(breaks) <= HEADER_LINES else False

    def odd_lines_are_comments(self, data, buffer, breaks, skip):
        """Lines with bytes other than printable ASCII, tab and line ends (UTF-8 text, control characters) are
        fine as comments (or the header); True when each one is, and they are marked to be skipped."""
        import numpy as np
        from .text_numbers import PAD
        odd = np.flatnonzero((buffer >= 128) | (buffer < 9) | ((buffer > 13) & (buffer < 28)))
        lines = np.unique(np.searchsorted(breaks, odd))
        if len(lines) > 100:
            return False
        for index in lines.tolist():
            if skip[index]:
                continue
            start = breaks[index - 1] + 1 if index else PAD
            stripped = data[start - PAD:breaks[index] - PAD].decode("utf-8", "replace").strip()
            if stripped and not stripped.startswith(("#", "//")):
                return False
            skip[index] = True
        return True

    @staticmethod
    def delimited(buffer, delimiter, tokens, starts, ends, breaks, counts, filled, uniform):
        """With a delimiter, a line holds data when it holds anything; it is regular when delimiters and tokens
        alternate, starting and ending with a token (no empty value, no two values in one field)."""
        import numpy as np
        marks = np.flatnonzero(buffer == delimiter)
        width = len(starts) // len(breaks) if uniform else 0
        if uniform and len(marks) == (width - 1) * len(breaks):
            marks = marks.reshape(len(breaks), width - 1)  # each between two tokens of one line: all regular
            if (ends.reshape(-1, width)[:, :-1] <= marks).all() and (marks < starts.reshape(-1, width)[:, 1:]).all():
                return filled, np.zeros(len(breaks), dtype=bool)
            marks = marks.ravel()
        per_line = np.diff(np.searchsorted(marks, breaks), prepend=0)
        filled = filled | (per_line > 0)
        irregular = filled & (per_line != counts - 1)
        if (per_line > 0).any():
            items = np.flatnonzero((tokens[1:] & ~tokens[:-1]) | (buffer[1:] == delimiter)) + 1  # tokens' starts, marks
            is_mark = buffer[items] == delimiter
            same = is_mark[1:] == is_mark[:-1]
            ends_of_lines = np.searchsorted(items, breaks) - 1  # each line's last item
            same[ends_of_lines[(ends_of_lines >= 0) & (ends_of_lines < len(same))]] = False
            if same.any():
                irregular[np.searchsorted(breaks, items[np.flatnonzero(same)])] = True
        return filled, irregular

    @staticmethod
    def first_byte(buffer, delimiter, breaks, lead, counts):
        """The position of each line's first byte that is not whitespace (a delimiter may come first)."""
        import numpy as np
        marks = np.flatnonzero(buffer == delimiter)
        if not len(marks):
            return lead
        index = np.searchsorted(marks, np.concatenate(([0], breaks[:-1])))
        mark = marks[np.minimum(index, len(marks) - 1)]
        has_mark = (index < len(marks)) & (mark < breaks)
        return np.where(has_mark & ((counts == 0) | (mark < lead)), mark, lead)

    def build(self, parts):
        """One chunk from (rows, start, stop) parts: from their values when every row is clean, else from their
        words as before."""
        import numpy as np
        if all(rows.clean(start, stop) for rows, start, stop in parts):
            chunk = np.zeros(sum(stop - start for _, start, stop in parts), self.dtype)
            for name in self.columns:
                if name == SKIP:
                    continue
                target, at = chunk[name], 0
                for rows, start, stop in parts:
                    values = rows.columns[name][start:stop]
                    if self.pts and name == "intensity":
                        values = values + PTS_INTENSITY_SHIFT
                    target[at:at + stop - start] = values
                    at += stop - start
            return chunk
        batch, numbers = [], []
        for rows, start, stop in parts:
            batch += rows.words_of(start, stop)
            numbers += rows.numbers[start:stop].tolist()
        return self.convert(batch, numbers)

    def convert(self, batch, numbers):
        """A chunk from the words of its rows (lists of str) and their line numbers, with the error that names
        the first bad line."""
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



def take(parts, count):
    """The first `count` rows of a list of (rows, start, stop) parts, and the parts left."""
    taken = []
    while count:
        rows, start, stop = parts[0]
        step = min(count, stop - start)
        taken.append((rows, start, start + step))
        count -= step
        parts = parts[1:] if start + step == stop else [(rows, start + step, stop)] + parts[1:]
    return taken, parts


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
    with open(path, "rb") as handle:
        yield PointStream(info, table.rows(handle, chunk_size))
