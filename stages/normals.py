"""`transform.normals`: each point's normal and curvature from its neighbours, as open3d's `estimate_normals`
computes them on the whole cloud: the k nearest points (the point itself included) or every point closer than
`radius`, their covariance from open3d's KD-tree, and its eigenvector of the smallest eigenvalue.

Adds `normal_x`, `normal_y`, `normal_z` (float32, unit length) and `curvature` (float32): the surface variation
λ0 / (λ0 + λ1 + λ2) of the same covariance (0 on a plane, 1/3 at most), computed as n·Cn / trace(C) with the
normal n, which is exact to rounding where n is the eigenvector. Where fewer than 3 neighbours are found (radius)
open3d gives the normal (0, 0, 1), and the curvature is NaN; so it is where all neighbours coincide.

Normals are then oriented: `up` turns them to point upwards (n_z >= 0; a vertical one is left as open3d gives
it), `viewpoint` towards a point [x, y, z] (the scanner's position, in the frame of the stages before), `none`
leaves the sign open3d gives. sink.ply writes them as `nx ny nz`, sink.las as extra-bytes dimensions.

The item is spilled to disk and computed in tiles with a buffer wide enough for every point's neighbourhood
(stages.neighbourhoods), relative to one origin near the data (so open3d's covariances, from raw moments, keep
their precision at UTM-sized coordinates); the points then stream again in their order.
"""
from pipeline.errors import OptionError
from pipeline.options import Kind, Option, choice, integer, is_number, shown, typed
from pipeline.stage import Transform

from .neighbourhoods import positive_number

ADDED = ("normal_x", "normal_y", "normal_z", "curvature")
DEFAULT_KNN = 8


def three_numbers():
    """An option kind: [x, y, z], three finite numbers."""
    def check(value, context):
        import math
        value = typed(value)
        values = [typed(v) for v in value] if isinstance(value, list) else None
        if values is None or len(values) != 3 or not all(is_number(v) and math.isfinite(v) for v in values):
            raise OptionError(f"expected [x, y, z] (three finite numbers), got {shown(value)}")
        return [float(v) for v in values]
    return Kind("[x, y, z]", check)


def covariance_entries(covariances):
    """The six entries (c00, c11, c22, c01, c02, c12) of symmetric 3 x 3 matrices (n, 3, 3), each as one
    contiguous array."""
    import numpy as np
    return tuple(np.ascontiguousarray(covariances[:, i, j]) for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2),
                                                                          (1, 2)))


def surface_variation(entries, normals):
    """n·Cn / trace(C) for covariances C (their six entries, see covariance_entries) and unit normals n (n, 3):
    λ0 / (λ0 + λ1 + λ2) where n is C's eigenvector of the smallest eigenvalue; NaN for a zero covariance or the
    identity (open3d's covariance of fewer than 3 neighbours).

    >>> import numpy as np
    >>> c = np.array([np.diag([4.0, 1.0, 0.5]), np.eye(3), np.zeros((3, 3))])
    >>> surface_variation(covariance_entries(c), np.array([[0.0, 0.0, 1.0]] * 3)).tolist()
    [0.09090909090909091, nan, nan]
    """
    import numpy as np
    c00, c11, c22, c01, c02, c12 = entries
    x, y, z = normals[:, 0], normals[:, 1], normals[:, 2]
    quadratic = c01 * x * y
    quadratic += c02 * x * z
    quadratic += c12 * y * z
    quadratic *= 2
    quadratic += c00 * x * x
    quadratic += c11 * y * y
    quadratic += c22 * z * z
    trace = c00 + c11
    trace += c22
    undefined = ~(trace > 0)
    undefined |= (c00 == 1) & (c11 == 1) & (c22 == 1) & (c01 == 0) & (c02 == 0) & (c12 == 0)
    np.maximum(quadratic, 0.0, out=quadratic)
    with np.errstate(invalid="ignore", divide="ignore"):
        quadratic /= trace
    quadratic[undefined] = np.nan
    return quadratic


class NormalsTransform(Transform):
    """Adds each point's normal (normal_x, normal_y, normal_z) and curvature, as open3d estimates them.

    From its k nearest neighbours or those within a radius, as open3d computes them on the whole cloud; oriented
    up, towards a viewpoint, or as open3d gives them."""

    options = (
        Option("knn", integer(minimum=3), f"neighbours of each point, itself included (default {DEFAULT_KNN} when "
               "`radius` is not given)", default=None),
        Option("radius", positive_number(), "use every point closer than this, in metres, instead of `knn`",
               default=None),
        Option("orient", choice("up", "viewpoint", "none"), "up: normals point upwards; viewpoint: towards "
               "`viewpoint`; none: as open3d gives them", default="up"),
        Option("viewpoint", three_numbers(), "[x, y, z] that normals face, with `orient: viewpoint` (in the frame "
               "after the stages before)", default=None),
    )

    @classmethod
    def check(cls, options):
        if options["knn"] is not None and options["radius"] is not None:
            raise OptionError("give either `knn` or `radius`, not both", "radius")
        if options["orient"] == "viewpoint" and options["viewpoint"] is None:
            raise OptionError("`orient: viewpoint` needs `viewpoint: [x, y, z]`", "orient")
        if options["viewpoint"] is not None and options["orient"] != "viewpoint":
            raise OptionError("`viewpoint` is used only with `orient: viewpoint`", "viewpoint")

    def neighbours(self):
        """{"knn": k} or {"radius": r}."""
        if self.options["radius"] is not None:
            return {"radius": self.options["radius"]}
        return {"knn": self.options["knn"] or DEFAULT_KNN}

    def start(self, item, info, decision=None):
        import numpy as np
        step = {"stage": self.label, **self.neighbours(), "orient": self.options["orient"]}
        if self.options["viewpoint"] is not None:
            step["viewpoint"] = list(self.options["viewpoint"])
        fields = {name: info.dtype.fields[name][0] for name in info.dtype.names}
        fields.update({name: np.dtype(np.float32) for name in ADDED})
        info = info.with_step(step, dtype=np.dtype(list(fields.items())))
        step = info.applied[-1]  # the counts are added when the item is done
        return info, lambda chunks: self.stream(chunks, item, step)

    def stream(self, chunks, item, step):
        import numpy as np
        from .neighbourhoods import (Grid, PointValues, Spill, Tiles, finished, in_order, knn_tiles, origin,
                                     workspace)
        with workspace(self.label) as space:
            spill = Spill.of(space, chunks)
            if not spill.count:
                finished(step, self.label, item, 0, 0)
                return
            centre = origin(spill.lows, spill.highs)
            tiles = Tiles(space, spill, Grid.metric(spill.lows, spill.highs, spill.count))
            values = PointValues(space, "normals", spill.count, [("normal", "<f4", (3,)), ("curvature", "<f4")])
            compute = Estimate(self.neighbours(), self.options["orient"], self.options["viewpoint"], centre)
            for positions, (normals, curvature) in knn_tiles(tiles, centre, compute, **self.neighbours()):
                computed = np.empty(len(positions), values.dtype)
                computed["normal"], computed["curvature"] = normals, curvature
                values.put(positions, computed)
            take = in_order(values.parts())
            for chunk in spill.chunks():
                got = take(len(chunk))
                normals = got["normal"]
                yield chunk.with_columns({"normal_x": np.ascontiguousarray(normals[:, 0]),
                                          "normal_y": np.ascontiguousarray(normals[:, 1]),
                                          "normal_z": np.ascontiguousarray(normals[:, 2]),
                                          "curvature": np.ascontiguousarray(got["curvature"])})
            finished(step, self.label, item, spill.count, spill.count)


class Estimate:
    """open3d's normal estimation for one cloud (see neighbourhoods.knn_tiles): the normals and curvatures of its
    first `count` points, oriented, and their reach (an upper bound of the distance to their k-th neighbour in
    the cloud; None for a radius)."""

    def __init__(self, neighbours, orient, viewpoint, centre):
        self.knn, self.radius = neighbours.get("knn"), neighbours.get("radius")
        self.orient = orient
        self.viewpoint = None if viewpoint is None else [v - c for v, c in zip(viewpoint, centre)]

    def __call__(self, local, count):
        import numpy as np
        from pipeline.imports import require
        o3d = require("open3d", "transform.normals")
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(local))
        search = (o3d.geometry.KDTreeSearchParamKNN(self.knn) if self.radius is None
                  else o3d.geometry.KDTreeSearchParamRadius(self.radius))
        cloud.estimate_covariances(search)
        cloud.estimate_normals(search)  # from the covariances just estimated, as estimate_normals alone would
        entries = covariance_entries(np.asarray(cloud.covariances)[:count])
        normals = np.ascontiguousarray(np.asarray(cloud.normals)[:count])
        del cloud
        if self.orient == "up":
            normals[normals[:, 2] < 0] *= -1
        elif self.orient == "viewpoint":
            towards = np.asarray(self.viewpoint) - local[:count]
            normals[np.einsum("ij,ij->i", normals, towards) < 0] *= -1
        curvature = surface_variation(entries, normals)
        if self.radius is not None:
            return (normals, curvature), None
        return (normals, curvature), self.reach(entries, local)

    def reach(self, entries, local):
        """An upper bound of each point's distance to its k-th neighbour in the cloud: with c the mean of the k
        neighbours q (the point among them, or all at distance 0), |q - c|² <= (k - 1)/k · Σ|q - c|² = (k - 1)
        · trace(C), so each q lies within 2·sqrt((k - 1)·trace(C)) of the point. The trace is given a margin for
        the rounding of open3d's raw moments. Infinite where the cloud holds fewer than k points."""
        import numpy as np
        if len(local) < self.knn:
            return np.full(len(entries[0]), np.inf)
        trace = entries[0] + entries[1]
        trace += entries[2]
        np.maximum(trace, 0.0, out=trace)
        largest = max(-float(local.min()), float(local.max())) if len(local) else 0.0
        trace += 64 * np.finfo(np.float64).eps * largest * largest
        trace *= self.knn - 1
        np.sqrt(trace, out=trace)
        trace *= 2.0 * (1 + 1e-9)
        return trace
