"""`source.files`: local point-cloud files, their format told by their first bytes, not their name."""
import glob
import os
from pathlib import Path

from pipeline.errors import SourceError
from pipeline.model import Item
from pipeline.options import Option, list_of, path
from pipeline.stage import Source

SIGNATURES = ((b"LASF", "las"), (b"ply", "ply"))


def sniff(file_path):
    """The format of a file from its first bytes."""
    try:
        with open(file_path, "rb") as handle:
            head = handle.read(16)
    except OSError as error:
        raise SourceError(f"{file_path}: cannot read: {error.strerror or error}") from error
    for signature, name in SIGNATURES:
        if head.startswith(signature):
            return name
    raise SourceError(f"{file_path}: unknown point-cloud format (starts with {head[:8]!r}); "
                      "expected LAS, LAZ or PLY")


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


def quick_point_count(file_path, file_format):
    from . import las, ply

    if file_format == "las":
        return las.check_header(file_path).point_count
    return ply.parse_header(file_path).vertex.count


class FilesSource(Source):
    """Reads local LAS, LAZ and PLY files (paths or globs, relative to the config's folder)."""

    options = Source.options + (
        Option("paths", list_of(path(), min_length=1), "files or glob patterns, e.g. data/*.laz"),
    )
    template_fields = ("name", "id", "stem", "index")

    def items(self):
        items = []
        for index, file_path in enumerate(expand(self.options["paths"])):
            file_format = sniff(file_path)
            stem = Path(file_path).stem
            items.append(Item(id=stem, name=stem, index=index, location=file_path,
                              point_count=quick_point_count(file_path, file_format),
                              fields={"stem": stem}, metadata={"format": file_format}))
        return items

    def inputs(self, items):
        return [item.location for item in items]

    def read(self, item):
        from . import las, ply

        reader = las.read_las if item.metadata["format"] == "las" else ply.read_ply
        return reader(item.location, self.options["chunk_size"])
