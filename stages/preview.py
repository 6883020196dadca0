"""`sink.preview`: a picture of what the run wrote, to see with one's own eyes that the scans line up.

Seen from above (`view: top`), each pixel shows the highest point that falls in it, so a wall is a line; seen
from the side (`view: side`), two panels, x–z and y–z, each pixel showing the point nearest the viewer. Pixels
without a point are transparent. A title, a scale bar in metres, the coordinates of two corners of each panel
and a legend (or a colour bar) are drawn around the points, on a transparent sheet, dark text with a white halo
so that it reads on any background.

The points stream: what is kept is the picture (a depth and a value per pixel), whatever their number. The
pixel grid comes from the bounds the stream declares before its first point (a LAS header; after transforms,
the moved bounds; for a merged picture, their union, which the engine measures when a header lacks them). An
item whose bounds are not known (PLY, text or E57 read without a transform) is kept in an anonymous temporary
file beside the picture, 24 bytes a point and its value, and drawn at its end, which the log says.

The drawing helpers (`compose`, `font`, `save_png`, the palettes) also serve the Cupix alignment plot. numpy
and Pillow are imported only where a picture is made, so that listing stages stays fast.
"""
import functools
import json
import logging
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import OptionError, SinkError
from pipeline.model import Bounds
from pipeline.options import Option, boolean, choice, integer, number, template
from pipeline.stage import Sink, Writer

log = logging.getLogger(__name__)

MODES = ("item", "elevation", "intensity", "classification", "rgb")
DEFAULT_SIZE = 2048
MAX_PIXELS = 1 << 26  # every panel together: 64 Mpx (a depth and a value per pixel, then the RGBA picture)
PNG_KEY = "cupix-pipeline"  # the PNG text chunk that holds the layout: panels, corners, resolution, legend
ELEVATION_PERCENTILES = (1, 99)  # the colours span these percentiles of the heights shown; beyond, the end colours
INTENSITY_PERCENTILES = (2, 98)
SAMPLE = 1 << 18  # percentiles are taken on about this many pixels (every k-th), the same on every run

# 20 colours that tell items apart, the strongest first (Sasha Trubetskoy's list of distinct colours,
# ordered for white and for dark backgrounds); item i takes colour i mod 20.
ITEM_COLOURS = (
    (230, 25, 75), (60, 180, 75), (67, 99, 216), (245, 130, 49), (145, 30, 180), (66, 212, 244), (240, 50, 230),
    (154, 99, 36), (128, 0, 0), (70, 153, 144), (191, 239, 69), (0, 0, 117), (128, 128, 0), (255, 225, 25),
    (250, 190, 212), (169, 169, 169), (220, 190, 255), (0, 0, 0), (170, 255, 195), (255, 216, 177),
)

# The ASPRS classes of LAS 1.4 (R15) and the colours QGIS gives them by default, with the colours QGIS
# repeats (classes 8/12, 13/14/16) made distinct; classes 19-22 added. Other values take ITEM_COLOURS.
CLASSES = {
    0: ("never classified", (186, 186, 186)), 1: ("unclassified", (140, 140, 140)), 2: ("ground", (170, 85, 0)),
    3: ("low vegetation", (0, 170, 170)), 4: ("medium vegetation", (85, 255, 85)),
    5: ("high vegetation", (0, 170, 0)), 6: ("building", (255, 85, 85)), 7: ("low point (noise)", (170, 0, 0)),
    8: ("model key-point", (85, 85, 85)), 9: ("water", (85, 255, 255)), 10: ("rail", (170, 0, 170)),
    11: ("road surface", (0, 0, 0)), 12: ("overlap", (120, 100, 60)), 13: ("wire guard", (255, 255, 85)),
    14: ("wire conductor", (230, 200, 0)), 15: ("transmission tower", (255, 85, 255)),
    16: ("wire connector", (255, 170, 0)), 17: ("bridge deck", (85, 85, 255)), 18: ("high noise", (100, 100, 100)),
    19: ("overhead structure", (130, 130, 255)), 20: ("ignored ground", (210, 180, 140)), 21: ("snow", (200, 235, 255)),
    22: ("temporal exclusion", (180, 160, 220)),
}

# viridis (matplotlib's perceptual map) at ten even steps, interpolated linearly between them
GREYS = ((0, 0, 0), (255, 255, 255))
VIRIDIS = ((68, 1, 84), (72, 40, 120), (62, 73, 137), (49, 104, 142), (38, 130, 142), (31, 158, 137),
           (53, 183, 121), (110, 206, 88), (181, 222, 43), (253, 231, 37))

INK, HALO, FRAME, PROBLEM = (30, 30, 30, 255), (255, 255, 255, 255), (150, 150, 150, 255), (220, 0, 0, 255)


# --- geometry: which pixel a point falls in ------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One raster of a picture: the axis (0 x, 1 y, 2 z) of its columns (`across`) and of its rows (`up`,
    growing upwards), the axis whose value decides which point a pixel shows (`depth`: the largest, or the
    smallest with `nearest_low`), the world coordinates of its lower-left corner (`u0`, `v0`; `d0` is where
    depth is measured from) and its size in pixels of `resolution` metres."""

    label: str
    across: int
    up: int
    depth: int
    nearest_low: bool
    u0: float
    v0: float
    d0: float
    resolution: float
    width: int
    height: int

    @property
    def axes(self):
        return "xyz"[self.across], "xyz"[self.up]

    @property
    def upper_right(self):
        return self.u0 + self.width * self.resolution, self.v0 + self.height * self.resolution

    def locate(self, xyz):
        """The pixel (row-major from the top-left) and the depth key (float32; the larger wins) of every point of
        a (3, n) array, and the points kept: None when all are, else a mask of those inside the panel (points
        less than half a pixel outside are put in the edge pixel)."""
        import numpy as np
        u, v, d = xyz[self.across], xyz[self.up], xyz[self.depth]
        top, right = self.v0 + self.height * self.resolution, self.u0 + self.width * self.resolution
        keep, slack = None, self.resolution / 2
        if len(u) and (u.min() < self.u0 - slack or u.max() > right + slack
                       or v.min() < self.v0 - slack or v.max() > top + slack):
            keep = (u >= self.u0 - slack) & (u <= right + slack) & (v >= self.v0 - slack) & (v <= top + slack)
            u, v, d = u[keep], v[keep], d[keep]
        scale = 1.0 / self.resolution
        column = ((u - self.u0) * scale).astype(np.intp)
        pixel = ((top - v) * scale).astype(np.intp)
        np.clip(column, 0, self.width - 1, out=column)
        np.clip(pixel, 0, self.height - 1, out=pixel)
        pixel *= self.width
        pixel += column
        key = (self.d0 - d if self.nearest_low else d - self.d0).astype(np.float32)
        return pixel, key, keep


# (label, across, up, depth, nearest_low): seen from above; from the side, looking north and looking west
VIEWS = {
    "top": (("", 0, 1, 2, False),),
    "side": (("x-z, looking along +y", 0, 2, 1, True), ("y-z, looking along -x", 1, 2, 0, False)),
}


def panels_of(bounds: Bounds, view="top", size=None, resolution=None):
    """The panels of a view over these bounds: `resolution` metres a pixel, or the longest side shown in
    `size` pixels (2048 when neither is given); more than MAX_PIXELS in all is a ValueError.

    >>> [(p.width, p.height, p.resolution) for p in panels_of(Bounds((0, 0, 0), (100, 50, 4)), size=200)]
    [(200, 100, 0.5)]
    >>> [(p.axes, p.width, p.height) for p in panels_of(Bounds((0, 0, 0), (100, 50, 4)), "side", resolution=1)]
    [(('x', 'z'), 100, 4), (('y', 'z'), 50, 4)]
    """
    shown = VIEWS[view]
    extents = [hi - lo for lo, hi in zip(bounds.mins, bounds.maxs)]
    if resolution is None:
        size = size or DEFAULT_SIZE
        longest = max(extents[axis] for _, across, up, _, _ in shown for axis in (across, up))
        resolution = longest / size if longest > 0 else 1.0

    def cells(axis):
        count = max(1, math.ceil(extents[axis] / resolution - 1e-9))
        return min(count, size) if size else count

    panels = [Panel(label, across, up, depth, low, bounds.mins[across], bounds.mins[up],
                    bounds.mins[depth] if not low else bounds.maxs[depth], resolution, cells(across), cells(up))
              for label, across, up, depth, low in shown]
    total = sum(p.width * p.height for p in panels)
    if total > MAX_PIXELS:
        sizes = " and ".join(f"{p.width:,} × {p.height:,}" for p in panels)
        raise ValueError(f"{resolution:g} m a pixel gives a picture of {sizes} pixels, more than {MAX_PIXELS:,}: "
                         "choose a coarser resolution, or a size")
    return panels


# --- the sink ---------------------------------------------------------------------------------------------------


class PreviewSink(Sink):
    """Draws a PNG picture of the points seen from above (or the side): one colour per item, height, intensity,
    classification or the points' colours, with a scale bar, corner coordinates and a legend."""

    options = (
        Option("path", template(), "output path template ending in .png, e.g. out/{name}.png"),
        Option("size", integer(minimum=16, maximum=16384), f"pixels of the picture's longer side (default "
               f"{DEFAULT_SIZE}; give size or resolution)", default=None),
        Option("resolution", number(), "metres a pixel (instead of size)", default=None),
        Option("color", choice(*MODES), "item: one colour per item, with a legend of their names; elevation: "
               "height on a perceptual colour map; intensity: grey; classification: ASPRS class colours; rgb: the "
               "points' own colours", default="item"),
        Option("view", choice("top", "side"), "top: seen from above; side: two panels, x–z and y–z", default="top"),
        Option("merge", boolean(), "one picture of every item (else one per item)", default=False),
    )

    @classmethod
    def check(cls, options):
        if not options["path"].lower().endswith(".png"):
            raise OptionError("expected a path ending in .png", "path")
        if options["resolution"] is not None:
            if options["size"] is not None:
                raise OptionError("give size or resolution, not both", "resolution")
            if options["resolution"] <= 0:
                raise OptionError(f"expected a number of metres > 0, got {options['resolution']:g}", "resolution")

    def needed(self):
        """The attributes the colour mode reads."""
        return {"intensity": ("intensity",), "classification": ("classification",),
                "rgb": ("red", "green", "blue")}.get(self.options["color"], ())

    def missing(self, info):
        return [name for name in self.needed() if name not in info.dtype.names]

    def refusal(self, name, info):
        attributes = ", ".join(info.dtype.names[3:]) or "none"
        return SinkError(f"{self.label}: {name}: color: {self.options['color']} needs {', '.join(self.needed())}, "
                         f"and {name} has no {', '.join(self.missing(info))} (its attributes: {attributes})")

    def open(self, item, info, staging):
        if self.missing(info):
            raise self.refusal(item.name, info)
        return PreviewWriter(self, item, info, staging.create(self.targets(item)[0]))

    def merged_info(self, items, infos):
        """Every item must have what the colour mode reads (a merged stream fills what one lacks with zeros); the
        picture's legend lists every item, in order, also those without points."""
        from dataclasses import replace
        for item, info in zip(items, infos):
            if self.missing(info):
                raise self.refusal(item.name, info)
        merged = super().merged_info(items, infos)
        listed = [[item.index, item.name] for item in items]
        return replace(merged, format_facts={**merged.format_facts, "preview": {"items": listed}})


EMPTY = -(1 << 63)  # a pixel no point falls in
OPAQUE = 0xFF000000  # the alpha byte of a little-endian RGBA word
LOW = 0xFFFFFFFF


def packed(key, value=None):
    """Each point's depth key (float32) and value (below 2**32) as one int64 whose order is the key's, then the
    value's: the key's bits, made to order as integers do, in the high half and the value in the low half, so
    that keeping the largest (`keep_largest`) keeps both the nearest point of a pixel and its value.

    >>> import numpy as np
    >>> keys = np.array([-2.5, -0.0, 0.0, 1.5, 1.5, 3.0], np.float32)
    >>> order = packed(keys, np.array([7, 1, 2, 3, 4, 0]))
    >>> bool((np.diff(order) > 0).all()), depth_of(order).tolist(), (order & LOW).tolist()
    (True, [-2.5, -0.0, 0.0, 1.5, 1.5, 3.0], [7, 1, 2, 3, 4, 0])
    """
    import numpy as np
    bits = key.view(np.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats order backwards as integers: flip their magnitude
    out = bits.astype(np.int64)
    out <<= 32
    if value is not None:
        out |= value
    return out


def depth_of(packed_values):
    """The depth keys (float32) of packed values."""
    import numpy as np
    bits = (packed_values >> 32).astype(np.int32)
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).view(np.float32)


def keep_largest(buffer, pixel, keyed):
    """Sets each pixel of `buffer` to the largest of its value and those of its points (`keyed`), as
    `np.maximum.at(buffer, pixel, keyed)` does, mostly without holding the interpreter's lock: np.maximum.at holds
    it throughout (0.75 ms per 65,536 points of uniform noise into a 2048² picture), while the compute thread
    waits to read and locate the next chunk. The points larger than their pixel are written (take, compare,
    select and assign let go of the lock); where several fell in one pixel, one of them was, and np.maximum.at
    does those still larger than it: few, except where many points of a chunk fall in one pixel, as down a wall
    seen from above (writing them again until none is larger took a round per point when they came in falling
    order, 80 ms a chunk).

    >>> import numpy as np
    >>> buffer = np.array([5, 0, 9])
    >>> keep_largest(buffer, np.array([0, 1, 1, 2, 1]), np.array([4, 3, 7, 10, 6]))
    >>> buffer.tolist()
    [5, 7, 10]
    """
    import numpy as np
    larger = np.flatnonzero(keyed > buffer.take(pixel))  # faster than a boolean mask where half are larger
    pixel, keyed = pixel.take(larger), keyed.take(larger)
    buffer[pixel] = keyed
    larger = np.flatnonzero(keyed > buffer.take(pixel))
    np.maximum.at(buffer, pixel.take(larger), keyed.take(larger))


class PreviewWriter(Writer):
    """Keeps, per pixel of each panel, the nearest point's depth key and value (its item, class, intensity, colour
    or height) packed in one int64 (see `packed`); draws the picture at `close`.

    `prepare` (the compute thread) finds each point's pixel and packs its key and value; `write` (the runner's
    thread) keeps the largest per pixel (`keep_largest`). Of points of equal height, the one of larger value
    shows, whatever their order.
    """

    def __init__(self, sink, item, info, staged):
        self.sink, self.item, self.staged = sink, item, staged
        self.options = sink.options
        self.mode = self.options["color"]
        self.merged = self.options["merge"]
        self.where = f"{sink.label}: {item.name}"
        self.items = {}  # item index -> (name, code): the items drawn, for the legend
        for index, name in info.format_facts.get("preview", {}).get("items", []):  # a merged picture's items
            self.items[index] = (name, len(self.items) + 1)
        self.sixteen = {}  # item index -> whether its colours use 16 bits (as sink.ply: see `eight_bit`)
        self.points = 0
        self.outside = 0
        self.written = None  # (size, sha256) once the picture is written
        self.current = item  # the item whose chunks come (merging: each item, see start_item)
        self.float_intensity = self.mode == "intensity" and info.dtype["intensity"].kind == "f"
        self.spill, self.spill_bounds, self.spill_dtype = None, None, None
        self.panels = self.buffers = None
        if info.bounds is not None:
            self.start(info.bounds)

    def start(self, bounds):
        import numpy as np
        try:
            self.panels = panels_of(bounds, self.options["view"], self.options["size"], self.options["resolution"])
        except ValueError as error:
            raise SinkError(f"{self.where}: {error}") from None
        self.buffers = [np.full(panel.width * panel.height, EMPTY, np.int64) for panel in self.panels]

    # -- per chunk

    def values(self, chunk, item):
        """What is packed under each point's key: the item's code (item), the class, the intensity (a float one
        as the bits of a float32, which `rows` reads back), the 8-bit colours (rgb: red, green and blue in the
        three low bytes, 8-bit as the item's first chunk says: see eight_bit), or None (elevation: the
        height is the key, or seen from the side, packed by `located`)."""
        import numpy as np
        if self.mode == "item":
            return self.items[item.index][1]
        if self.mode == "classification":
            return unsigned(chunk["classification"], np.uint8)
        if self.mode == "intensity":
            values = chunk["intensity"]
            if values.dtype.kind == "f":
                return values.astype(np.float32).view(np.uint32)
            return unsigned(values, np.uint16)
        if self.mode == "rgb":
            channels = [chunk[name] for name in ("red", "green", "blue")]
            if item.index not in self.sixteen:  # the item's first chunk: 16-bit colours if any exceeds 255
                high = max((int(c.max(initial=0)) for c in channels if c.dtype != np.uint8), default=0)
                self.sixteen[item.index] = high > 255
            red, green, blue = (eight_bit(channel, self.sixteen[item.index]) for channel in channels)
            green <<= 8
            blue <<= 16
            red |= green
            red |= blue
            return red
        return None

    def located(self, xyz, values):
        """Per panel: the pixel of every point kept, and its key and value packed."""
        import numpy as np
        found = []
        for panel in self.panels:
            pixel, key, keep = panel.locate(xyz)
            own = values
            if self.mode == "elevation" and panel.depth != 2:
                own = (xyz[2] - panel.v0).astype(np.float32).view(np.uint32)
            if keep is not None:
                own = own[keep] if isinstance(own, np.ndarray) else own
                self.outside += int(len(keep) - np.count_nonzero(keep))
            found.append((pixel, packed(key, own)))
        return found

    def prepare(self, chunk):
        if len(chunk) == 0:
            return None
        item = self.current
        if item.index not in self.items:
            self.items[item.index] = (item.name, len(self.items) + 1)
        values = self.values(chunk, item)
        if self.panels is None:
            return len(chunk), None, (chunk.xyz, values)
        return len(chunk), self.located(chunk.xyz, values), None

    def write(self, prepared):
        if prepared is None:
            return
        count, found, kept = prepared
        self.points += count
        if found is None:
            self.keep(*kept)
        else:
            self.draw(found)

    def start_item(self, item):
        self.current = item

    def draw(self, found):
        for buffer, (pixel, keyed) in zip(self.buffers, found):
            keep_largest(buffer, pixel, keyed)

    # -- items without bounds: kept in a temporary file, drawn at the end

    def keep(self, xyz, values):
        import numpy as np
        if self.spill is None:
            log.info("%s: the bounds are not known before the points: they are kept in a temporary file and drawn "
                     "at the end", self.where)
            self.spill = tempfile.TemporaryFile(dir=self.staged.parent, prefix=".preview-")
            self.spill_dtype = values.dtype if isinstance(values, np.ndarray) else None
        self.spill_bounds = Bounds(tuple(xyz.min(axis=1).tolist()), tuple(xyz.max(axis=1).tolist())).union(
            self.spill_bounds)
        self.spill.write(np.int64(xyz.shape[1]).tobytes())
        self.spill.write(np.ascontiguousarray(xyz).tobytes())
        if self.spill_dtype is not None:
            self.spill.write(np.ascontiguousarray(values).tobytes())

    def replay(self):
        import numpy as np
        self.start(self.spill_bounds)
        self.spill.seek(0)
        values = self.items[self.item.index][1] if self.mode == "item" else None  # one item: its code
        while head := self.spill.read(8):
            count = int(np.frombuffer(head, np.int64)[0])
            xyz = np.frombuffer(self.spill.read(24 * count), np.float64).reshape(3, count)
            if self.spill_dtype is not None:
                values = np.frombuffer(self.spill.read(count * self.spill_dtype.itemsize), self.spill_dtype)
            self.draw(self.located(xyz, values))
        self.spill.close()
        self.spill = None

    # -- the picture

    def close(self):
        if self.spill is not None:
            self.replay()
        if self.outside:
            log.warning("%s: %d points lay outside the bounds the stream declared and are not drawn", self.where,
                        self.outside)
        if not self.points:
            log.warning("%s: no points: the picture is empty", self.where)
        view = "seen from above" if self.options["view"] == "top" else "seen from the side"
        things = f"{len(self.items)} item{'s' if len(self.items) != 1 else ''}, " if self.merged else ""
        subtitle = f"{things}{self.points:,} points {view}, colour: {self.mode}"
        if not self.points or self.panels is None:
            layer, layout = compose(self.title(), subtitle + " (no points)", [])
            self.written = write_png(self.staged, layer, [], layout)
        else:
            subtitle += f", {self.panels[0].resolution:.4g} m a pixel"
            legend, bar = self.legend()
            layer, layout = compose(self.title(), subtitle, self.panels, legend=legend, colour_bar=bar)
            self.written = write_png(self.staged, layer, [(place["box"], functools.partial(self.rows, index))
                                                          for index, place in enumerate(layout["panels"])], layout,
                                     runs_only=self.mode == "rgb")
        self.panels = self.buffers = None

    def checksums(self):
        """The picture's size and sha256, computed as it was written (so the runner need not read it back)."""
        return {str(self.staged): self.written} if self.written else {}

    def abort(self):
        if self.spill is not None:
            self.spill.close()
            self.spill = None
        self.panels = self.buffers = None

    def title(self):
        """The config's name is not known to a sink: a merged picture is titled by its file's name, an item's
        picture by the item's name."""
        return Path(self.sink.targets(self.item)[0]).stem if self.merged else self.item.name

    def heights(self, index, part):
        """The height (z, float32) shown by the pixels of `part` (packed values of panel `index`)."""
        import numpy as np
        panel = self.panels[index]
        if panel.depth == 2:
            return depth_of(part) + np.float32(panel.d0)
        return (part & LOW).astype(np.uint32).view(np.float32) + np.float32(panel.v0)

    def intensities(self, part):
        """The intensity shown by the pixels of `part` (a float32 intensity is kept as its bits)."""
        import numpy as np
        low = (part & LOW).astype(np.uint32)
        return low.view(np.float32) if self.float_intensity else low

    def legend(self):
        """The legend (heading, [(name, rgb), ...]) or the colour bar (heading, stops, low, high); the colour
        tables and the range the colours span are kept for `rows`."""
        import numpy as np
        if self.mode == "item":
            ordered = sorted(self.items.items())
            self.table = np.zeros((len(ordered) + 1, 4), np.uint8)
            for index, (_, code) in ordered:
                self.table[code] = (*ITEM_COLOURS[index % len(ITEM_COLOURS)], 255)
            return ("items", [(name, ITEM_COLOURS[index % len(ITEM_COLOURS)]) for index, (name, _) in ordered]), None
        if self.mode == "classification":
            self.table = class_table()
            counts = np.zeros(256, np.int64)
            for buffer in self.buffers:  # a slice at a time, not a copy of every pixel shown
                for start in range(0, len(buffer), 1 << 20):
                    part = buffer[start:start + (1 << 20)]
                    counts += np.bincount((part[part != EMPTY] & 0xFF).astype(np.intp), minlength=256)
            return ("ASPRS classes", [(f"{c} {CLASSES[c][0]}" if c in CLASSES else f"class {c}",
                                       tuple(int(v) for v in self.table[c, :3])) for c in np.flatnonzero(counts)]), None
        if self.mode == "rgb":
            return None, None
        samples = []
        for index, buffer in enumerate(self.buffers):
            every = buffer[::max(1, len(buffer) // SAMPLE)]
            every = every[every != EMPTY]
            samples.append(self.heights(index, every) if self.mode == "elevation" else self.intensities(every))
        if self.mode == "elevation":
            self.low, self.high = spread(samples, ELEVATION_PERCENTILES)
            self.table = ramp(VIRIDIS)
            return None, ("height (m)", VIRIDIS, self.low, self.high)
        self.low, self.high = spread(samples, INTENSITY_PERCENTILES)
        self.table = ramp(GREYS)
        return None, ("intensity", GREYS, self.low, self.high)

    def rows(self, index, start, stop):
        """Rows start..stop of a panel as RGBA, (rows, width, 4) uint8: coloured only when written out, each
        pixel's four bytes taken as one word from the colour table."""
        import numpy as np
        panel = self.panels[index]
        part = self.buffers[index][start * panel.width:stop * panel.width]
        if self.mode == "rgb":  # red, green, blue in the low bytes
            words = part.astype("<u4")
            words |= OPAQUE
        else:
            table = self.table.view("<u4").reshape(-1)
            if self.mode == "elevation":
                words = table.take(steps(self.heights(index, part), self.low, self.high))
            elif self.mode == "intensity":
                words = table.take(steps(self.intensities(part), self.low, self.high))
            else:  # item, classification: a code
                words = table.take(part & (0xFFFF if self.mode == "item" else 0xFF))
        words[part == EMPTY] = 0  # nothing shown: transparent black
        return words.view(np.uint8).reshape(stop - start, panel.width, 4)


def unsigned(values, kind):
    """Values as the unsigned integers `kind` holds (others clipped to its range): what is packed under a key.

    >>> import numpy as np
    >>> unsigned(np.array([-3, 7, 300]), np.uint8).tolist()
    [0, 7, 255]
    """
    import numpy as np
    if values.dtype == kind:
        return values
    return np.clip(values, 0, np.iinfo(kind).max).astype(kind)


def eight_bit(values, sixteen):
    """Colour values in 8 bits (as uint32), as sink.ply makes them: divided by 257 and rounded when the item uses 16
    bits, else kept (values above 255, which a first chunk of 8-bit values did not foresee, clipped; below 0, 0).

    >>> import numpy as np
    >>> eight_bit(np.array([0, 128, 129, 2570, 65535]), True).tolist(), eight_bit(np.array([7, 255, 300]), False).tolist()
    ([0, 0, 1, 10, 255], [7, 255, 255])
    """
    import numpy as np
    values = unsigned(values, np.uint16).astype(np.uint32)
    if sixteen:  # round(v / 257) = (v + 128) // 257, as a product and a shift (exact below 65536)
        values += 128
        values *= 65281
        values >>= 24
    else:
        np.minimum(values, 255, out=values)
    return values


def spread(samples, percentiles):
    """The low and high percentiles of the values shown (each panel sampled at every k-th pixel)."""
    import numpy as np
    values = np.concatenate([s.astype(np.float64) for s in samples])
    low, high = np.percentile(values, percentiles) if len(values) else (0.0, 0.0)
    return float(low), float(high)


def steps(values, low, high):
    """0..255 along low..high (values beyond take the ends; not a number: 0).

    >>> steps(__import__("numpy").array([10.0, 15.0, 20.0, 99.0]), 10.0, 20.0).tolist()
    [0, 128, 255, 255]
    """
    import numpy as np
    if high <= low:
        return np.full(len(values), 128, np.uint8)
    scaled = np.subtract(values, np.float32(low), dtype=np.float32)
    scaled *= np.float32(255.0 / (high - low))
    scaled += np.float32(0.5)
    np.clip(scaled, 0, 255, out=scaled)
    return np.nan_to_num(scaled, copy=False).astype(np.uint8)


def ramp(stops):
    """A 256-entry RGBA table interpolated linearly between colour stops.

    >>> ramp(((0, 0, 0), (255, 255, 255)))[[0, 128, 255]].tolist()
    [[0, 0, 0, 255], [128, 128, 128, 255], [255, 255, 255, 255]]
    """
    import numpy as np
    where = np.linspace(0, len(stops) - 1, 256)
    table = np.empty((256, 4), np.uint8)
    for channel in range(3):
        table[:, channel] = np.round(np.interp(where, np.arange(len(stops)), [s[channel] for s in stops]))
    table[:, 3] = 255
    return table


def class_table():
    import numpy as np
    table = np.empty((256, 4), np.uint8)
    for code in range(256):
        table[code] = (*CLASSES.get(code, (None, ITEM_COLOURS[code % len(ITEM_COLOURS)]))[1], 255)
    return table


# --- drawing ------------------------------------------------------------------------------------------------


def font(size):
    """Pillow's own scalable font (Aileron, Pillow >= 10.1 with FreeType), else its small bitmap font."""
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def text_size(longest):
    """The text height for a picture whose longer side is `longest` pixels."""
    return max(14, min(40, round(longest / 48)))


def nice_length(most):
    """The longest of 1, 2, 5 × 10^k metres that is at most `most`.

    >>> nice_length(37.0), nice_length(9.99), nice_length(0.3)
    (20.0, 5.0, 0.2)
    """
    exponent = math.floor(math.log10(most))
    for factor in (5, 2, 1):
        if factor * 10 ** exponent <= most:
            return float(factor * 10 ** exponent)
    return float(10 ** exponent)


def metres(length):
    """A length for the scale bar's label.

    >>> metres(2000.0), metres(20.0), metres(0.5)
    ('2 km', '20 m', '0.5 m')
    """
    return f"{length / 1000:g} km" if length >= 1000 else f"{length:g} m"


def coordinates(panel, corner, decimals):
    names = panel.axes
    return "   ".join(f"{name} {value:.{decimals}f}" for name, value in zip(names, corner))


class Sheet:
    """Text and marks with a white halo on a transparent RGBA image, which read on any background."""

    def __init__(self, image, size):
        from PIL import ImageDraw
        self.image, self.draw, self.size = image, ImageDraw.Draw(image), size
        self.fonts = {}
        self.halo = max(2, size // 8)

    def font(self, size):
        if size not in self.fonts:
            self.fonts[size] = font(size)
        return self.fonts[size]

    def measure(self, text, size):
        left, _, right, _ = self.draw.textbbox((0, 0), text, font=self.font(size), stroke_width=self.halo)
        return right - left

    def line_height(self, size):
        ascent, descent = self.font(size).getmetrics()
        return ascent + descent

    def text(self, xy, text, size, fill=INK, anchor="la"):
        self.draw.text(xy, text, font=self.font(size), fill=fill, anchor=anchor, stroke_width=self.halo,
                       stroke_fill=HALO)

    def box(self, box, fill, outline=INK):
        """A filled rectangle (x, y, width, height) with a 1-pixel outline and a halo."""
        x, y, w, h = box
        self.draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], fill=HALO)
        self.draw.rectangle([x, y, x + w - 1, y + h - 1], fill=fill, outline=outline)


def compose(title, subtitle, panels, legend=None, colour_bar=None, notes=(), size=None):
    """The sheet of a picture, without the panels' pixels: on a transparent RGBA image, the title and subtitle at
    the top; a frame for each panel (one below another) with the coordinates of its upper-right and lower-left
    corners (and its label); a scale bar under the last; to the right, the legend (heading, [(name, rgb), ...])
    or the colour bar (heading, colour stops, low, high); notes ((text, rgba) lines) at the bottom. Returns the
    image and the layout: where each thing is, in pixels (`panels[i]["box"]` is where panel i's pixels go), and
    the world coordinates of the panels. `size` is the text's (by default, from the panels' size)."""
    from PIL import Image

    size = size or text_size(max([p.width for p in panels] + [sum(p.height for p in panels)] + [480]))
    probe = Sheet(Image.new("RGBA", (1, 1)), size)
    big = round(size * 1.4)
    line, pad, gap = probe.line_height(size), size, size // 2
    decimals = min(3, max(0, math.ceil(-math.log10(panels[0].resolution / 2)))) if panels else 0  # half a pixel

    # the column of panels, under the title
    places, y = [], pad + probe.line_height(big) + gap + line + pad
    column = 0
    for panel in panels:
        label_h = line + gap if panel.label else 0
        upper = coordinates(panel, panel.upper_right, decimals)
        lower = coordinates(panel, (panel.u0, panel.v0), decimals)
        shift = max(0, probe.measure(upper, size) - panel.width)
        top = y + label_h + line + gap
        places.append({"panel": panel, "x": pad + shift, "y": top, "upper": upper, "lower": lower, "label_y": y,
                       "upper_y": y + label_h})
        column = max(column, shift + panel.width, probe.measure(lower, size))
        y = top + panel.height + gap + line + gap
    bar_y = y
    if panels:
        y += line + gap
    bottom = y + len(notes) * line + pad

    # the legend or the colour bar, right of the panels
    right = pad + column + 2 * pad
    first = places[0]["upper_y"] if places else y
    room = places[-1]["y"] + panels[-1].height - first if places else 0
    heading, entries = legend if legend and legend[1] else ("", [])
    side_w = side_h = 0
    entry_places = []
    if entries:
        entry = round(line * 1.2)
        rows = max(1, (max(10 * entry, room) - line - gap) // entry)
        x = right
        for start in range(0, len(entries), rows):
            widest = 0
            for row, (name, colour) in enumerate(entries[start:start + rows]):
                shown = name if len(name) <= 40 else name[:37] + "..."
                top = first + line + gap + row * entry
                entry_places.append({"name": name, "shown": shown, "colour": list(colour),
                                     "box": [x, top + (line - size) // 2, size, size], "at": (x + size + gap, top)})
                widest = max(widest, size + gap + probe.measure(shown, size))
            x += widest + 2 * pad
        side_w = max(x - 2 * pad - right, probe.measure(heading, size))
        side_h = line + gap + min(rows, len(entries)) * entry
    bar = None
    if colour_bar is not None:
        heading, stops, low, high = colour_bar
        length = max(8 * line, min(room - line - gap, 16 * line))
        labels = [f"{v:.{label_decimals(low, high)}f}" for v in (high, (low + high) / 2, low)]
        bar = {"box": [right, first + line + gap, size, length], "heading": heading, "low": low, "high": high,
               "labels": labels}
        side_w = max(probe.measure(heading, size), size + gap + max(probe.measure(t, size) for t in labels))
        side_h = line + gap + length + line // 2

    width = max(right + side_w + pad if side_w else pad + column + pad, 2 * pad + probe.measure(title, big),
                2 * pad + probe.measure(subtitle, size), 2 * pad + max([probe.measure(t, size) for t, _ in notes] or [0]))
    height = max(bottom, first + side_h + pad)

    # zeroed memory that takes no room until drawn on (Pillow: "core.new() returns zeroed memory"): the panels'
    # area, most of the sheet, is left to write_png
    image = Image.new("RGBA", (width, height), None)
    sheet = Sheet(image, size)
    sheet.text((pad, pad), title, big)
    sheet.text((pad, pad + probe.line_height(big) + gap), subtitle, size)
    layout = {"title": title, "subtitle": subtitle, "size": [width, height], "panels": [], "legend": [],
              "colour_bar": None, "scale_bar": None, "notes": [text for text, _ in notes]}
    mark = max(4, size // 2)
    for place in places:
        panel, x, y = place["panel"], place["x"], place["y"]
        w, h = panel.width, panel.height
        for corner, ends in (((x + w, y - 1), ((x + w + mark, y - 1), (x + w, y - 1 - mark))),
                             ((x - 1, y + h), ((x - 1 - mark, y + h), (x - 1, y + h + mark)))):
            for end in ends:
                sheet.draw.line([corner, end], fill=INK, width=2)
        if panel.label:
            sheet.text((x, place["label_y"]), panel.label, size)
        sheet.text((x + w, place["upper_y"]), place["upper"], size, anchor="ra")
        sheet.text((x, y + h + gap), place["lower"], size)
        layout["panels"].append({"label": panel.label, "box": [x, y, w, h], "axes": list(panel.axes),
                                 "lower_left": [panel.u0, panel.v0], "upper_right": list(panel.upper_right),
                                 "resolution": panel.resolution})
    if panels:
        panel, x = panels[-1], places[-1]["x"]
        length = nice_length(panel.width * panel.resolution / 4)
        pixels = max(1, round(length / panel.resolution))
        thickness = max(4, size // 3)
        top = bar_y + (line - thickness) // 2
        sheet.draw.rectangle([x - 2, top - 2, x + pixels + 1, top + thickness + 1], fill=HALO)
        sheet.draw.rectangle([x, top, x + pixels - 1, top + thickness - 1], fill=INK)
        sheet.text((x + pixels + gap, bar_y), metres(length), size)
        layout["scale_bar"] = {"box": [x, top, pixels, thickness], "metres": length, "label": metres(length)}
    for number_, (text, fill) in enumerate(notes):
        sheet.text((pad, bottom - pad - (len(notes) - number_) * line), text, size, fill=fill)
    if entries:
        sheet.text((right, first), heading, size)
        for place in entry_places:
            sheet.box(place["box"], tuple(place["colour"]) + (255,))
            sheet.text(place["at"], place["shown"], size)
            layout["legend"].append({"name": place["name"], "colour": place["colour"], "box": place["box"]})
    if bar is not None:
        x, y, w, h = bar["box"]
        gradient = ramp(colour_bar[1])
        sheet.text((x, first), bar["heading"], size)
        sheet.draw.rectangle([x - 2, y - 2, x + w + 1, y + h + 1], fill=HALO)
        for row in range(h):
            sheet.draw.line([(x, y + row), (x + w - 1, y + row)],
                            fill=tuple(int(v) for v in gradient[round(255 * (h - 1 - row) / max(1, h - 1))]))
        sheet.draw.rectangle([x, y, x + w - 1, y + h - 1], outline=INK)
        for text, at in zip(bar["labels"], (y, y + h // 2, y + h - 1)):
            sheet.draw.line([(x + w, at), (x + w + gap // 2, at)], fill=INK, width=2)
            sheet.text((x + w + gap, at), text, size, anchor="lm")
        layout["colour_bar"] = {key: bar[key] for key in ("box", "heading", "low", "high", "labels")}
    return image, layout


def label_decimals(low, high):
    span = abs(high - low)
    return 2 if span < 10 else 1 if span < 100 else 0


SEGMENT = 128  # rows of the picture coloured and deflated as one piece, by one of the encoding threads


def write_png(path, sheet, panels, layout=None, level=1, threads=None, runs_only=False) -> "tuple[int, str]":
    """Writes the picture as an RGBA PNG: the sheet's rows with each panel's pixels put in its box (`panels`:
    (box, rows(start, stop) -> (rows, width, 4) uint8)) and a 1-pixel frame around it. Returns the file's size
    and sha256, computed as it is written.

    The rows are coloured and deflated SEGMENT rows at a time, on `threads` threads (numpy and zlib let go of
    the interpreter), so no panel is ever coloured whole: each segment is a raw deflate stream of its own that
    ends on a byte boundary, as pigz makes them, and their concatenation, with the Adler-32 of the whole
    combined from theirs, is the one zlib stream PNG wants. Rows are stored unfiltered, at zlib level 1:
    Pillow's encoder tries every PNG filter on every row, which took 0.6-1 s for a 2048-pixel picture of 10
    million points, against 0.06-0.18 s on one thread. `runs_only` has deflate look for runs of one byte only
    (zlib's Z_RLE), not for repeated patterns: the right choice for the points' own colours, whose neighbouring
    pixels seldom repeat a pattern (10 million points of random colours in a 2048-pixel picture: 0.09 s, 7.9 MB,
    against 0.21 s, 8.0 MB), not for colours from a table (elevation: 7.4 MB against 3.7 MB). The bytes depend
    on the pixels only (fixed segments, no time chunk); the layout goes in an iTXt chunk.
    """
    import zlib
    from concurrent.futures import ThreadPoolExecutor

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    width, height = sheet.size
    starts = range(0, height, SEGMENT)

    def segment(start):
        data = png_rows(sheet, panels, start, min(height, start + SEGMENT))
        deflate = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_RLE if runs_only else zlib.Z_DEFAULT_STRATEGY)
        last = start + SEGMENT >= height
        return deflate.compress(data) + deflate.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH), \
            zlib.adler32(data), data.nbytes

    with open(path, "wb") as file:
        out = Hashed(file)
        out.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)))
        if layout is not None:
            text = json.dumps(layout, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            out.write(chunk(b"iTXt", PNG_KEY.encode("latin-1") + b"\0\0\0\0\0" + text))
        checksum, header = 1, b"\x78\x01"  # zlib header: deflate, 32 KB window, fastest
        with ThreadPoolExecutor(threads or min(4, os.cpu_count() or 1)) as pool:
            for packed_, adler, length in pool.map(segment, starts):
                out.write(chunk(b"IDAT", header + packed_))
                checksum, header = adler32_combine(checksum, adler, length), b""
        out.write(chunk(b"IDAT", struct.pack(">I", checksum)) + chunk(b"IEND", b""))
    return out.size, out.digest.hexdigest()


def png_rows(sheet, panels, start, stop):
    """Rows start..stop of the picture as PNG stores them: a filter byte (0: none), then RGBA pixels."""
    import numpy as np
    width = sheet.size[0]
    rows = np.zeros((stop - start, width * 4 + 1), np.uint8)
    pixels = rows[:, 1:].reshape(stop - start, width, 4)
    pixels[...] = np.asarray(sheet.crop((0, start, width, stop)))
    for (x, y, w, h), colours in panels:
        top, bottom = max(start, y - 1), min(stop, y + h + 1)
        if top >= bottom:
            continue
        frame = pixels[top - start:bottom - start]
        frame[:, [x - 1, x + w]] = FRAME
        for edge in (y - 1, y + h):
            if top <= edge < bottom:
                frame[edge - top, x - 1:x + w + 1] = FRAME
        inside, end = max(top, y), min(bottom, y + h)
        if inside < end:
            pixels[inside - start:end - start, x:x + w] = colours(inside - y, end - y)
    return rows


def adler32_combine(first, second, length):
    """The Adler-32 of two pieces of data one after the other, from theirs and the second's length (zlib's
    adler32_combine, which Python's zlib does not offer).

    >>> import zlib
    >>> a, b = b"sink.preview " * 999, b"draws pictures" * 777
    >>> adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    True
    """
    base = 65521
    remainder = length % base
    low = first & 0xFFFF
    high = (remainder * low) % base
    low += (second & 0xFFFF) + base - 1
    high += ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + base - remainder
    return (low % base) | ((high % base) << 16)


class Hashed:
    """A file that counts and hashes what is written to it."""

    def __init__(self, file):
        import hashlib
        self.file, self.size, self.digest = file, 0, hashlib.sha256()

    def write(self, data):
        self.file.write(data)
        self.size += len(data)
        self.digest.update(data)
