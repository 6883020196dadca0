"""sink.overlap: whether the scans line up where they overlap, pair by pair, and the corrections if they do not.

Each item's writer keeps a thinned copy of its points (the first point of each `cell`, as transform.voxel's
`first`: memory bounded by the site, not the scan), wherever the item runs; at the end of the run, in the
process that ends it, check.py measures every pair of items (pairs.py), adjusts the corrections (adjust.py)
and writes the report, the picture and the corrections. Nothing is moved: the corrections are data, for
a second run with transform.align's `corrections` option.
"""
from pathlib import Path

from pipeline.errors import OptionError, StageError
from pipeline.options import Option, boolean, list_of, number, template, template_fields, text
from pipeline.stage import Sink, Writer

from ..voxel import SeenCells

FILES = ("path", "plot", "corrections")


class OverlapSink(Sink):
    """Measures how well the items agree where they overlap (distances, point-to-plane ICP, a verdict per pair);
    writes a JSON report, and optionally a picture and the corrections a global adjustment would apply."""

    options = (
        Option("path", template(), "the JSON report (items, pairs, figures, verdicts, options), e.g. "
               "out/overlap.json"),
        Option("cell", number(), "metres: each item is thinned to the first point of each cell of this size",
               default=0.05),
        Option("distance", number(), "metres: a point within this distance of the other item is in the overlap; "
               "also ICP's correspondence distance", default=0.10),
        Option("min_overlap", number(minimum=0, maximum=1), "the share of an item's points in the overlap below "
               "which a pair has too little overlap to say", default=0.05),
        Option("tolerance", number(), "metres: a pair disagrees when a median distance, or the RMS of ICP's motion "
               "of the overlap, is above this", default=0.02),
        Option("fail_on_disagreement", boolean(), "fail the run (no output put in place) when a pair disagrees",
               default=False),
        Option("plot", template(), "a PNG: every item's outline from above, overlapping pairs joined by a line "
               "coloured by their median distance", default=None),
        Option("corrections", template(), "a JSON file of per-item 4x4 corrections (global adjustment of the pairs' "
               "ICP), for transform.align's corrections option", default=None),
        Option("fixed", list_of(text()), "names of items held fixed in the adjustment, besides the largest group "
               "of agreeing items", default=[]),
    )
    gathers = True

    @classmethod
    def check(cls, options):
        for name in ("cell", "distance", "tolerance"):
            if options[name] <= 0:
                raise OptionError(f"expected a number of metres > 0, got {options[name]:g}", name)
        for name, suffix in zip(FILES, (".json", ".png", ".json")):
            value = options[name]
            if value is None:
                continue
            if template_fields(value):
                raise OptionError("one file is written for every item together: no {fields} in it", name)
            if not value.lower().endswith(suffix):
                raise OptionError(f"expected a path ending in {suffix}", name)

    def outputs(self):
        return [Path(self.options[name].format()) for name in FILES if self.options[name] is not None]

    def prepare(self, items):
        names = {item.name for item in items}
        unknown = [name for name in self.options["fixed"] if name not in names]
        if unknown:
            listed = ", ".join(item.name for item in items[:20]) + (", ..." if len(items) > 20 else "")
            raise StageError(f"{self.label}: fixed: no item is named {', '.join(unknown)} (the items: {listed})")
        return {}

    def open(self, item, info, staging):
        return Thinning(SeenCells(self.options["cell"], self.label, info.bounds, info.point_count))

    def finish(self, gathered, staging):
        from .check import check_overlap
        return check_overlap(self.label, self.options, gathered, staging)


class Thinning(Writer):
    """Keeps the first point of each cell of one item (in the compute thread, chunk after chunk, in order)."""

    def __init__(self, seen):
        self.seen, self.kept, self.points = seen, [], 0

    def prepare(self, chunk):
        self.points += len(chunk)
        if len(chunk):
            self.kept.append(chunk.xyz[:, self.seen.first_new(chunk.xyz)].T)
        return None

    def write(self, prepared):
        pass

    def close(self):
        pass

    def gathered(self):
        import numpy as np
        xyz = np.concatenate(self.kept) if self.kept else np.empty((0, 3))
        return {"xyz": np.ascontiguousarray(xyz), "points": self.points}
