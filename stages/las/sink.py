"""`sink.las`: LAS or LAZ by the path's extension."""
from pathlib import Path

from pipeline.errors import OptionError
from pipeline.options import Option, boolean, one_of_values, template, xyz_numbers
from pipeline.stage import Sink

from .writer import LasWriter


class LasSink(Sink):
    """Writes LAS or LAZ (by the path's extension), keeping every attribute, VLR and the input's scale."""

    options = (
        Option("path", template(), "output path template ending in .las or .laz, e.g. out/{name}.laz"),
        Option("version", one_of_values("1.2", "1.4"), "LAS version (default: the input's; 1.4 for other formats)",
               default=None),
        Option("scale", xyz_numbers(positive=True), "coordinate resolution (default: the input's, else 0.001)",
               default=None),
        Option("offset", xyz_numbers(keywords=("auto",)), "coordinate offset (auto: whole units below the "
               "transformed data)", default="auto"),
        Option("merge", boolean(), "write every item into one file", default=False),
    )

    @classmethod
    def check(cls, options):
        if Path(options["path"]).suffix.lower() not in (".las", ".laz"):
            raise OptionError("expected a path ending in .las or .laz", "path")

    def open(self, item, info, staging):
        final = self.targets(item)[0]
        return LasWriter(self, item, info, staging.create(final), final.suffix.lower() == ".laz")

    def open_raw(self, item, info, raw, staging):
        """The fast path: the input's own LAS records, written as they are but for X, Y, Z."""
        if getattr(raw, "kind", None) != "las":
            return None
        writer = self.open(item, info, staging)
        if writer.header.point_format.dtype() != raw.dtype:
            writer.abort()
            return None
        return writer
