"""`transform.outliers`: finds the points that open3d's `remove_statistical_outlier` or `remove_radius_outlier`
would remove from the whole cloud, and drops them or gives them a class.

- `statistical` (PCL's and PDAL's method): a point's mean distance to its `mean_k` nearest points (itself
  included, as open3d counts) is compared with the mean m and the standard deviation s of those means over the
  item: it is an outlier unless 0 < its mean < m + `multiplier` · s. The means come from open3d's KD-tree; m and
  s are summed in the points' order, as open3d sums them, so the same points are kept.
- `radius`: a point is an outlier unless more than `min_k` points lie within `radius` of it, itself included
  (open3d's nb_points): that is, at least `min_k` others.

`action: classify` keeps every point and sets the outliers' `classification` to `class` (7, LAS's low noise);
an item without a classification gets one, 0 (never classified) for the others. LAS point formats 0-5 hold
classes 0-31: a larger class for such an item stops the run, naming it.

The item is spilled to disk and computed in tiles with a buffer wide enough for every point's neighbourhood
(stages.neighbourhoods), then its points stream again in their order.
"""
from pipeline.errors import OptionError, StageError
from pipeline.options import Option, choice, integer
from pipeline.stage import Transform

from .neighbourhoods import positive_number

DEFAULTS = {"mean_k": 8, "multiplier": 2.0, "min_k": 2, "class": 7}
OF_METHOD = {"statistical": ("mean_k", "multiplier"), "radius": ("radius", "min_k")}
QUERIES = 1 << 18  # points whose neighbours are searched at once (their indices and distances: 16 bytes each)


def las_point_format(info):
    """The point format of a LAS item (from the header bytes its reader kept), else None."""
    facts = info.format_facts.get("las")
    if not facts or len(facts.get("header", b"")) < 105:
        return None
    return facts["header"][104] & 0x3F  # the top bits mark LAZ compression


def largest_class(info):
    """The largest class the item's classification can hold: 31 in LAS point formats 0-5, else its type's."""
    import numpy as np
    point_format = las_point_format(info)
    if point_format is not None and point_format <= 5:
        return 31, f"LAS point format {point_format} holds classes 0-31"
    if "classification" not in info.dtype.names:
        return 255, ""
    kind = info.dtype["classification"].base
    if kind.kind in "iu":
        return int(np.iinfo(kind).max), f"its classification is {kind.name}"
    return 255, ""


class OutliersTransform(Transform):
    """Drops or classifies the points that open3d's statistical or radius outlier removal would remove.

    The same points as open3d's remove_statistical_outlier or remove_radius_outlier on the whole cloud."""

    drops_points = True  # with `action: drop`
    options = (
        Option("method", choice("statistical", "radius"), "statistical: a point's mean distance to its mean_k "
               "nearest points against the item's; radius: how many points lie within `radius`",
               default="statistical"),
        Option("mean_k", integer(minimum=1), f"statistical: points a mean distance is taken over, the point "
               f"itself included (default {DEFAULTS['mean_k']})", default=None),
        Option("multiplier", positive_number(), "statistical: outliers lie beyond the mean of the mean distances "
               f"plus this many standard deviations (default {DEFAULTS['multiplier']})", default=None),
        Option("radius", positive_number(), "radius: the distance, in metres", default=None),
        Option("min_k", integer(minimum=1), "radius: outliers have fewer than this many other points within "
               f"`radius` (default {DEFAULTS['min_k']})", default=None),
        Option("action", choice("drop", "classify"), "drop the outliers, or set their classification",
               default="drop"),
        Option("class", integer(minimum=0, maximum=255), f"classify: the outliers' class (default "
               f"{DEFAULTS['class']}, low noise)", default=None),
    )

    @classmethod
    def check(cls, options):
        method = options["method"]
        for other, names in OF_METHOD.items():
            for name in names:
                if other != method and options[name] is not None:
                    raise OptionError(f"`{name}` is for `method: {other}`", name)
        if method == "radius" and options["radius"] is None:
            raise OptionError("`method: radius` needs `radius`", "radius")
        if options["class"] is not None and options["action"] != "classify":
            raise OptionError("`class` is used only with `action: classify`", "class")

    def __init__(self, options, label=""):
        super().__init__(options, label)
        self.drops_points = self.options["action"] == "drop"

    def settings(self):
        """The options that apply, with their defaults."""
        o = self.options
        names = OF_METHOD[o["method"]] + (("class",) if o["action"] == "classify" else ())
        return {name: DEFAULTS[name] if o[name] is None else o[name] for name in names}

    def start(self, item, info, decision=None):
        import numpy as np
        settings = self.settings()
        step = {"stage": self.label, "method": self.options["method"], **settings, "action": self.options["action"]}
        if self.options["action"] == "classify":
            largest, why = largest_class(info)
            if settings["class"] > largest:
                raise StageError(f"{self.label}: {item.name}: class {settings['class']} does not fit: {why}")
            if "classification" not in info.dtype.names:
                fields = [(name, info.dtype.fields[name][0]) for name in info.dtype.names]
                info = info.with_step(step, dtype=np.dtype(fields + [("classification", np.uint8)]))
            else:
                info = info.with_step(step)
        else:
            info = info.with_step(step)
        step = info.applied[-1]  # the counts are added when the item is done
        return info, lambda chunks: self.stream(chunks, item, step, settings)

    def stream(self, chunks, item, step, settings):
        import numpy as np
        from .neighbourhoods import Grid, PointValues, Spill, Tiles, finished, knn_tiles, origin, workspace
        with workspace(self.label) as space:
            spill = Spill.of(space, chunks)
            if not spill.count:
                finished(step, self.label, item, 0, 0)
                return
            centre = origin(spill.lows, spill.highs)
            tiles = Tiles(space, spill, Grid.metric(spill.lows, spill.highs, spill.count))
            if self.options["method"] == "radius":
                kept = np.zeros(spill.count, bool)
                search = knn_tiles(tiles, centre, RadiusCounts(settings["min_k"], settings["radius"]),
                                   radius=settings["radius"])
                for positions, inside in search:
                    kept[positions] = inside
                keep = Flags(kept)
            else:
                means = PointValues(space, "means", spill.count, "<f8")
                search = knn_tiles(tiles, centre, MeanDistances(settings["mean_k"]), knn=settings["mean_k"])
                for positions, values in search:
                    means.put(positions, values)
                keep = Statistical(means, settings["multiplier"])
                step["threshold"] = keep.threshold
            points_out = 0
            for chunk in spill.chunks():
                inside = keep.next(len(chunk))
                if self.options["action"] == "drop":
                    chunk = chunk if inside.all() else chunk.take(np.flatnonzero(inside))
                    points_out += len(chunk)
                    if len(chunk):
                        yield chunk
                    continue
                points_out += len(chunk)
                yield self.classified(chunk, inside, settings["class"])
            finished(step, self.label, item, spill.count, points_out)

    @staticmethod
    def classified(chunk, inside, value):
        import numpy as np
        if "classification" in chunk.names:
            classes = np.array(chunk["classification"])
        else:
            classes = np.zeros(len(chunk), np.uint8)
        classes[~inside] = value
        return chunk.with_columns({"classification": classes})


class Flags:
    """Keep flags in the points' order: `next(n)` gives the next n."""

    def __init__(self, flags):
        self.flags, self.done = flags, 0

    def next(self, count):
        self.done += count
        return self.flags[self.done - count:self.done]


class Statistical:
    """open3d's remove_statistical_outlier from the points' mean distances (PointValues): their mean m and
    standard deviation s, each summed in the points' order as open3d sums them (a running sum: numpy's cumsum
    adds one value after the other, where its sum would add them pairwise), the threshold m + multiplier · s, and
    the flags of the points kept (0 < mean < threshold), in order."""

    def __init__(self, means, multiplier):
        import numpy as np
        self.means, count = means, means.count
        total = 0.0
        for values in means.parts():
            total = float(np.cumsum(np.concatenate(([total], np.where(values > 0, values, 0.0))))[-1])
        mean = total / count
        squares = 0.0
        for values in means.parts():
            deviation = values - mean
            deviation *= deviation
            squares = float(np.cumsum(np.concatenate(([squares], np.where(values > 0, deviation, 0.0))))[-1])
        with np.errstate(invalid="ignore", divide="ignore"):
            deviation = float(np.sqrt(np.float64(squares) / np.float64(count - 1)))  # Bessel's correction
        self.threshold = mean + multiplier * deviation
        from .neighbourhoods import in_order
        self.take = in_order(means.parts())

    def next(self, count):
        values = self.take(count)
        return (values > 0) & (values < self.threshold)


class MeanDistances:
    """For neighbourhoods.knn_tiles: each of a cloud's first `count` points' mean distance to its k nearest
    points of the cloud (open3d's KD-tree search; the distances' square roots summed one after the other, as
    open3d sums them), and its reach: the k-th distance."""

    def __init__(self, k):
        self.k = k

    def __call__(self, local, count):
        import numpy as np
        from pipeline.imports import require
        o3d = require("open3d", "transform.outliers")
        points = o3d.core.Tensor(local)
        search = o3d.core.nns.NearestNeighborSearch(points)
        search.knn_index()
        k = min(self.k, len(local))
        means, reach = np.empty(count), np.empty(count)
        for start in range(0, count, QUERIES):
            _, squared = search.knn_search(points[start:min(start + QUERIES, count)], k)
            distances = np.sqrt(squared.numpy())
            total = distances[:, 0].copy()
            for column in range(1, k):
                total += distances[:, column]
            means[start:start + len(total)] = total / k
            reach[start:start + len(total)] = distances[:, -1]
        if len(local) < self.k:
            reach[:] = np.inf
        return means, reach


class RadiusCounts:
    """For neighbourhoods.knn_tiles: whether open3d's remove_radius_outlier keeps each of a cloud's first `count`
    points (more than min_k points of the cloud within the radius, itself included)."""

    def __init__(self, min_k, radius):
        self.min_k, self.radius = min_k, radius

    def __call__(self, local, count):
        import numpy as np
        from pipeline.imports import require
        o3d = require("open3d", "transform.outliers")
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(local))
        _, kept = cloud.remove_radius_outlier(self.min_k, self.radius)
        inside = np.zeros(len(local), bool)
        inside[np.asarray(kept, dtype=np.int64)] = True
        return inside[:count], None
