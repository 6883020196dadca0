"""`sink.las`: LAS or LAZ by the path's extension."""
import logging
from dataclasses import replace
from pathlib import Path

from pipeline.errors import OptionError
from pipeline.options import Option, boolean, one_of_values, template, text, xyz_numbers
from pipeline.stage import Sink

from ..crs import HELP, check_option
from .crs import check_same_crs
from .header import header_of
from .writer import LasWriter

log = logging.getLogger(__name__)


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
        Option("crs", text(), HELP, default="keep"),
        Option("merge", boolean(), "write every item into one file", default=False),
    )

    @classmethod
    def check(cls, options):
        if Path(options["path"]).suffix.lower() not in (".las", ".laz"):
            raise OptionError("expected a path ending in .las or .laz", "path")
        check_option(options["crs"])

    def open(self, item, info, staging):
        final = self.targets(item)[0]
        return LasWriter(self, item, info, staging.create(final), final.suffix.lower() == ".laz")

    def merged_info(self, items, infos):
        """The first item's header is the model (VLRs, version); the finest scale of any item is kept, and the
        offset is chosen from the union of the bounds, since items may lie far apart. Items whose coordinate
        systems differ are not merged."""
        import numpy as np
        if self.options["crs"] == "keep":
            check_same_crs(self.label, items, infos)
        info = super().merged_info(items, infos)
        facts = {key: value for key, value in info.format_facts.items() if key == "created"}
        las = [i.format_facts.get("las") for i in infos]
        if all(las):
            headers = [header_of(f) for f in las]
            scales = np.min([h.scales for h in headers], axis=0)
            facts["las"] = {**las[0], "scales": scales.tolist(), "merged": True}
            if len({(h.point_format.id, tuple(h.scales)) for h in headers}) > 1:
                log.info("merge: the items have different LAS layouts; writing scale %s", scales.tolist())
        return replace(info, format_facts=facts)

