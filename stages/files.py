"""`source.files`: local point-cloud files, their format told by their first bytes, not their name."""
import glob
import importlib
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.model import Item
from pipeline.options import Option, choice, list_of, path, text
from pipeline.stage import Source

SIGNATURES = ((b"LASF", "las"), (b"ply", "ply"), (b"ASTM-E57", "e57"), (b"PK\x03\x04", "zip"))
HEAD = 4096


def sniff_bytes(head: bytes):
    """The format of a point cloud from its first bytes, or None."""
    from .text import is_pts, is_text

    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    if is_text(head):
        return "pts" if is_pts(head) else "xyz"
    return None


def sniff(file_path):
    """The format of a file from its first bytes; anything unknown is a one-line error."""
    try:
        with open(file_path, "rb") as handle:
            head = handle.read(HEAD)
    except OSError as error:
        raise SourceError(f"{file_path}: cannot read: {error.strerror or error}") from error
    found = sniff_bytes(head)
    if found is None:
        raise SourceError(f"{file_path}: unknown point-cloud format (starts with {head[:8]!r}); "
                          "expected LAS, LAZ, PLY, PTS, XYZ, E57 or a zip holding one of them")
    return found


def first_non_finite(columns):
    """(index, name) of the first point whose coordinates are not all finite numbers, or None: `columns` maps
    x, y (and z) to arrays of the same length. Readers call it on every chunk, so that no NaN or infinite
    coordinate reaches a transform or a sink (other float attributes may hold them).

    >>> import numpy as np
    >>> first_non_finite({"x": np.array([1.0, 2.0, 3.0]), "y": np.array([0.0, np.inf, np.nan])})
    (1, 'y')
    """
    import numpy as np
    finite = None
    for values in columns.values():
        finite = np.isfinite(values) if finite is None else np.logical_and(finite, np.isfinite(values), out=finite)
    if finite is None or finite.all():
        return None
    index = int(np.argmin(finite))
    return index, next(name for name, values in columns.items() if not np.isfinite(values[index]))


def check_finite(path, chunk, where):
    """Refuses a chunk whose x, y or z is not a finite number; `where(index)` names the point (its vertex,
    or its scan and point)."""
    from pipeline.model import XYZ
    found = first_non_finite({axis: chunk[axis] for axis in XYZ})
    if found is not None:
        index, axis = found
        raise SourceError(f"{path}: {where(index)}: {axis} {chunk[axis][index]} is not a finite number")


TEXT_SUFFIXES = (".pts", ".xyz", ".asc", ".txt", ".csv")


def looks_like_points(name, head):
    """A text member of an archive is a point cloud when it is named like one and has rows of 3+ numbers
    (so a readme beside the cloud is not taken for one)."""
    from .text import NUMBER

    if Path(name).suffix.lower() not in TEXT_SUFFIXES:
        return False
    rows = [line.replace(",", " ").replace(";", " ").split() for line in head.decode("ascii", "replace").splitlines()]
    return any(len(row) >= 3 and all(NUMBER.match(word) for word in row) for row in rows[:5])


# A zip is unpacked to a temporary folder before its point cloud is read, so what a member would unpack to is
# checked first. LAS compresses 3-10 times with deflate, LAZ not at all, PLY and text 2-5 times; a member that
# claims more than 100 times its compressed size is a zip bomb (1.5 MB unpacking to 1.5 GB), not a point
# cloud, once it is big enough to matter (a small file of repeated rows compresses better and is harmless).
ZIP_MAX_RATIO = 100
ZIP_RATIO_FROM = 64 << 20  # bytes: members smaller than this are unpacked whatever their ratio
ZIP_KEEP_FREE = 64 << 20  # bytes left free on the temporary folder's disk after unpacking


def zip_problem(file_path, name, error):
    """A zip library error, as one line naming the archive and the member."""
    from .las import described

    text = described(error)
    if isinstance(error, zipfile.BadZipFile) and "CRC" in text:
        text += " (a damaged archive, or a member larger than its header says)"
    return SourceError(f"{file_path}: cannot unpack {name}: {text}")


def check_member_size(file_path, info):
    """Refuses a member whose declared size is a zip bomb's (see ZIP_MAX_RATIO)."""
    size, packed = info.file_size, max(info.compress_size, 1)
    if size > ZIP_RATIO_FROM and size > ZIP_MAX_RATIO * packed:
        raise SourceError(f"{file_path}: member {info.filename} would unpack to {size} bytes from {packed}, "
                          f"{size // packed} times its size: refused as a zip bomb (the limit is {ZIP_MAX_RATIO} "
                          f"times, for members over {ZIP_RATIO_FROM >> 20} MB)")


def zip_member(file_path):
    """The one point cloud inside a zip archive, and its format (a zip inside is not a point cloud)."""
    found = []
    try:
        with zipfile.ZipFile(file_path) as archive:
            for info in archive.infolist():
                name = info.filename
                if info.is_dir() or name.startswith("__MACOSX/") or Path(name).name.startswith("."):
                    continue
                try:
                    with archive.open(info) as member:
                        head = member.read(HEAD)
                except Exception as error:  # anything the zip library raises on a damaged member
                    raise zip_problem(file_path, name, error) from error
                kind = sniff_bytes(head)
                if kind not in (None, "zip") and (kind not in ("pts", "xyz") or looks_like_points(name, head)):
                    found.append((info, kind))
    except SourceError:
        raise
    except Exception as error:  # BadZipFile, and whatever else a damaged directory makes the library raise
        raise SourceError(f"{file_path}: broken zip archive: {error}") from error
    if len(found) != 1:
        listed = ", ".join(info.filename for info, _ in found) or "none"
        raise SourceError(f"{file_path}: expected a zip holding one point cloud, found {len(found)} ({listed})")
    info, kind = found[0]
    check_member_size(file_path, info)
    return info.filename, kind


def unpack(file_path, member, folder):
    """Unpacks one member into `folder`, checking the disk space first and the size as it goes; its path."""
    from pipeline.model import safe_name

    target = Path(folder) / safe_name(Path(member).name)
    try:
        with zipfile.ZipFile(file_path) as archive:
            info = archive.getinfo(member)  # its size checked by zip_member, which named it
            free = shutil.disk_usage(folder).free
            if info.file_size + ZIP_KEEP_FREE > free:
                raise SourceError(f"{file_path}: member {member} needs {info.file_size} bytes unpacked but "
                                  f"{Path(folder).parent} has {free} bytes free, less the {ZIP_KEEP_FREE >> 20} MB "
                                  "kept free")
            written = 0
            with archive.open(info) as source, open(target, "wb") as out:
                while block := source.read(1 << 20):
                    written += len(block)
                    if written > info.file_size:  # zipfile stops at the declared size; this is a second guard
                        raise SourceError(f"{file_path}: member {member} unpacks to more than the {info.file_size} "
                                          "bytes its header declares")
                    out.write(block)
    except SourceError:
        raise
    except OSError as error:  # writing the unpacked file: a full disk, say
        if error.filename == str(target):
            raise SourceError(f"{file_path}: cannot unpack {member} to {target}: {error.strerror or error}") from error
        raise zip_problem(file_path, member, error) from error
    except Exception as error:
        raise zip_problem(file_path, member, error) from error
    return target


def expand(patterns):
    """Files matching each pattern, sorted within a pattern, each file once, in order."""
    found = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                raise SourceError(f"no file matches {pattern}")
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            raise SourceError(f"{pattern}: no such file")
        found += [m for m in matches if m not in found]
    return found


# The readers, one per format: the module, how it opens a file as a point stream, and how it counts the points
# from the header when that is cheap (None when it is not)
READERS = {
    "las": ("las", lambda m, path, chunk_size, columns, truncated: m.read_las(path, chunk_size, truncated),
            lambda m, path, truncated: m.check_header(path, truncated).point_count),
    "ply": ("ply", lambda m, path, chunk_size, columns, truncated: m.read_ply(path, chunk_size, truncated),
            lambda m, path, truncated: m.parse_header(path).vertex.count),
    "e57": ("e57", lambda m, path, chunk_size, columns, truncated: m.read_e57(path, chunk_size), None),
    "pts": ("text", lambda m, path, chunk_size, columns, truncated: as_chunks(m.read_text(path, chunk_size, columns)),
            lambda m, path, truncated: m.pts_count(path)),
    "xyz": ("text", lambda m, path, chunk_size, columns, truncated: as_chunks(m.read_text(path, chunk_size, columns)),
            None),
}


@contextmanager
def as_chunks(opening):
    """The stream of a reader that yields numpy structured arrays, as chunks."""
    from pipeline.chunk import Chunk
    from pipeline.model import PointStream

    with opening as stream:
        yield PointStream(stream.info, map(Chunk.of, stream.chunks))


def reader_module(file_format):
    return importlib.import_module(f"{__package__}.{READERS[file_format][0]}")


def quick_point_count(file_path, file_format, truncated="error"):
    """The point count from the header, when the format has one and reading it is cheap (a truncated LAS
    file is an error here already, unless `truncated` is `read`)."""
    count = READERS[file_format][2] if file_format in READERS else None  # not for a zip: its member is counted when read
    return count(reader_module(file_format), file_path, truncated) if count else None


def open_reader(file_path, file_format, chunk_size, columns, truncated="error"):
    return READERS[file_format][1](reader_module(file_format), file_path, chunk_size, columns, truncated)


@contextmanager
def read_file(file_path, chunk_size, columns=None, truncated="error"):
    """Opens any supported file as a point stream; a zip is unpacked to a temporary folder first.
    `truncated` says what a LAS, LAZ or PLY file holding fewer points than its header claims is: an
    error, or `read` as it is (with a warning)."""
    file_format = sniff(file_path)
    if file_format != "zip":
        with open_reader(file_path, file_format, chunk_size, columns, truncated) as stream:
            yield stream
        return
    member, member_format = zip_member(file_path)
    folder = tempfile.mkdtemp(prefix="pipeline-zip-")
    try:
        extracted = unpack(file_path, member, folder)
        with open_reader(extracted, member_format, chunk_size, columns, truncated) as stream:
            yield stream
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class FilesSource(Source):
    """Reads local LAS, LAZ, PLY, PTS, XYZ/TXT and E57 files, or a zip holding one (paths or globs)."""

    options = Source.options + (
        Option("paths", list_of(path(), min_length=1), "files or glob patterns, e.g. data/*.laz"),
        Option("columns", list_of(text(), min_length=2), "names of the columns of XYZ/TXT/PTS files "
               "(e.g. [x, y, z, intensity]; _ skips one); default: from a header line or the column count",
               default=None),
        Option("metadata", path(), "a Cupix pointcloud listing (JSON) describing these files, for "
               "transform.align; each file is matched to a sub by name, original file name or id", default=None),
        Option("truncated", choice("error", "read"), "a LAS or PLY file holding fewer points than its header "
               "claims: error (stop the run), or read the points it holds, with a warning (a LAZ file cut short is "
               "always an error: its chunk table, at its end, is gone)", default="error"),
    )
    template_fields = ("name", "id", "stem", "index")

    @classmethod
    def template_fields_for(cls, options):
        return cls.template_fields + (("group", "sub", "capture") if options.get("metadata") else ())

    @classmethod
    def missing_inputs(cls, options):
        from pipeline.errors import OptionError
        missing = []
        for index, pattern in enumerate(options["paths"]):
            try:
                expand([pattern])
            except SourceError as error:
                missing.append(OptionError(str(error), "paths", index))
        return missing

    def items(self):
        from .cupix.listing import Listing, match_file

        listing = Listing.from_file(self.options["metadata"]) if self.options["metadata"] else None
        items = []
        for index, file_path in enumerate(expand(self.options["paths"])):
            file_format = sniff(file_path)
            if file_format == "zip":
                zip_member(file_path)  # one point cloud inside, or a clear error now
            stem = Path(file_path).stem
            fields, metadata = {"stem": stem}, {"format": file_format}
            if listing is not None:
                sub = match_file(listing, file_path)
                group = listing.group_of(sub)
                capture = listing.capture_of(sub) or (listing.capture_of(group) if group else None)
                fields.update(sub=sub["id"], group=group["id"] if group else "", capture=capture or "")
                metadata["cupix"] = {"sub": sub, "group": group, "capture_id": capture}
            items.append(Item(id=stem, name=stem, index=index, location=file_path,
                              point_count=quick_point_count(file_path, file_format, self.options["truncated"]),
                              fields=fields, metadata=metadata))
        return items

    def inputs(self, items):
        return [item.location for item in items]

    def read(self, item, decision=None):
        return read_file(item.location, self.options["chunk_size"], self.options["columns"], self.options["truncated"])
