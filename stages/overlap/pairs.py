"""How well two thinned scans agree where they overlap: the share of each within reach of the other, the
distances between their surfaces, a point-to-plane ICP, and the verdict.

Distances are measured from each point to the other scan's surface (the plane through its nearest point, with
that point's normal), not to the nearest point: after thinning to 5 cm cells, the nearest point of a
perfectly aligned scan is itself up to a few centimetres away along the surface, which would hide a real
misalignment of that size. Coordinates are taken relative to a common origin near the site (`Cloud.local`),
so that rotations are about a point near the scans and not about the survey frame's origin, kilometres away.

Only the points that can matter are searched: those within reach of the other cloud's box for the distances,
and those within ICP_MARGIN of the overlap for ICP (see `icp`); scans that overlap by a third spend most of
their points elsewhere.
"""
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from pipeline.imports import require

NORMAL_NEIGHBOURS = 16  # points a normal is fitted to
ICP_ITERATIONS = 100
DIGITS = 12
REFINE = 0.25  # the second round of ICP matches points closer than this share of `distance`
ICP_MARGIN = 1.0  # metres: ICP leaves out the moving cloud's points farther than `distance` + this from the fixed one
MIN_POINTS = 100  # thinned points of each item in the overlap below which a pair has too little overlap to say
# the conditioning below which ICP is said not to fix every motion: 0.07-0.24 measured for the demo's pairs (walls
# every way, boxes, a floor); 1e-4 to 1e-3 for a floor alone, a floor and a wall, a corridor
CONSTRAINED = 0.01
AGREES, DISAGREES, TOO_LITTLE = "agrees", "disagrees", "too little overlap"


@dataclass
class Cloud:
    """One item's thinned points relative to the site origin, with open3d's cloud (normals estimated) and a
    nearest-neighbour index built on first use."""

    name: str
    local: np.ndarray  # (n, 3) float64
    _cloud: object = None
    _search: object = None

    @cached_property
    def lows(self):
        return self.local.min(axis=0)

    @cached_property
    def highs(self):
        return self.local.max(axis=0)

    def cloud(self):
        if self._cloud is None:
            o3d = require("open3d", "sink.overlap")
            cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(self.local))
            cloud.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(NORMAL_NEIGHBOURS))
            self._cloud = cloud
        return self._cloud

    def normals(self):
        return np.asarray(self.cloud().normals)

    def nearest(self, points):
        """For each of `points`, the index of the nearest point of this cloud and the distance to it."""
        o3d = require("open3d", "sink.overlap")
        if self._search is None:
            self._search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(self.local))
            self._search.knn_index()
        index, squared = self._search.knn_search(o3d.core.Tensor(np.ascontiguousarray(points)), 1)
        return index.numpy()[:, 0].astype(np.intp), np.sqrt(squared.numpy()[:, 0])


def near_boxes(first, second, distance):
    """Whether the bounding boxes of two clouds, grown by `distance`, meet."""
    return bool(np.all(first.lows - distance <= second.highs) and np.all(second.lows - distance <= first.highs))


def surface_distances(points, other, reach):
    """The distance of each point to the other cloud's surface at its nearest point, to that point, and the
    point's index, for the points within `reach` of the other's bounding box; the others, farther than `reach`
    from any of its points, are given inf for both distances and -1 for the index."""
    inside = np.flatnonzero(np.all((points >= other.lows - reach) & (points <= other.highs + reach), axis=1))
    across, nearest = np.full(len(points), np.inf), np.full(len(points), np.inf)
    index = np.full(len(points), -1, np.intp)
    if len(inside):
        index[inside], nearest[inside] = other.nearest(points[inside])
        across[inside] = np.abs(np.einsum("ij,ij->i", points[inside] - other.local[index[inside]],
                                          other.normals()[index[inside]]))
    return across, nearest, index


def conditioning(points, normals):
    """How well point-to-plane ICP can fix all six degrees of freedom from these points and the normals of their
    matches: the smallest over the largest eigenvalue of its normal equations (rows [(p - c)/r × n, n], with c
    the points' centre and r their RMS radius, so that turns and moves weigh alike). Near 0 when the overlap
    leaves a motion free: a floor alone lets the scan slide and turn on it, a corridor slide along it."""
    centre = points.mean(axis=0)
    radius = max(float(np.sqrt(np.mean(np.sum((points - centre) ** 2, axis=1)))), 1e-9)
    rows = np.hstack([np.cross((points - centre) / radius, normals), normals])
    values = np.linalg.eigvalsh(rows.T @ rows)
    return float(values[0] / values[-1]) if values[-1] > 0 else 0.0


def figures(distances):
    if not len(distances):
        return {"points": 0, "median": None, "p90": None, "rms": None}
    return {"points": int(len(distances)), "median": float(np.median(distances)),
            "p90": float(np.percentile(distances, 90)), "rms": float(np.sqrt(np.mean(distances ** 2)))}


def icp(moving, fixed, distance, nearest):
    """Point-to-plane ICP (open3d) of `moving` onto `fixed`, from where they are: the 4×4 (site frame) that brings
    `moving` onto `fixed`, its fitness and inlier RMSE. Pairs closer than `distance` are matched first, then,
    from there, pairs closer than REFINE of it: the first round's wide matches also pair points of different
    surfaces near edges and corners, which pull the result by millimetres.

    `nearest`: the distance of each point of `moving` to `fixed`. Only the points within `distance` + ICP_MARGIN
    take part: the others could be matched only once ICP had moved them by more than ICP_MARGIN, so the
    result is the same in a fraction of the time (fitness counts the matches among all the points, as
    open3d's would). Should the result move a point left out by more than half of ICP_MARGIN, all of them
    are matched again."""
    kept = nearest <= distance + ICP_MARGIN
    matrix, matched, rmse = icp_rounds(moving.local[kept], fixed, distance)
    left_out = moving.local[~kept]
    if len(left_out) and np.max(np.linalg.norm(left_out @ matrix[:3, :3].T + matrix[:3, 3] - left_out,
                                               axis=1)) > ICP_MARGIN / 2:
        matrix, matched, rmse = icp_rounds(moving.local, fixed, distance)
    # open3d's threads sum in any order: the last bits differ from run to run, so the result is rounded far
    # above them (1e-12, in metres of the site frame) to give the same report on every run
    return np.round(matrix, DIGITS), matched / len(moving.local), round(rmse, DIGITS)


def icp_rounds(points, fixed, distance):
    """ICP's two rounds for `points` onto `fixed`: the 4×4, the number of points matched and the inlier RMSE."""
    o3d = require("open3d", "sink.overlap")
    registration = o3d.pipelines.registration
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    criteria = registration.ICPConvergenceCriteria(relative_fitness=1e-9, relative_rmse=1e-9,
                                                   max_iteration=ICP_ITERATIONS)
    matrix = np.eye(4)
    for reach in (distance, distance * REFINE):
        result = registration.registration_icp(source, fixed.cloud(), reach, matrix,
                                               registration.TransformationEstimationPointToPlane(), criteria)
        matrix = np.asarray(result.transformation)
    return matrix, len(result.correspondence_set), float(result.inlier_rmse)


def worst_median(pair):
    """The larger of a measured pair's two median distances."""
    return max(pair["distances"]["first_to_second"]["median"], pair["distances"]["second_to_first"]["median"])


def verdict_counts(pairs):
    """{verdict: how many of these pairs have it}, for each verdict."""
    return {verdict: sum(p["verdict"] == verdict for p in pairs) for verdict in (AGREES, DISAGREES, TOO_LITTLE)}


def rotation_degrees(matrix):
    cosine = (np.trace(matrix[:3, :3]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def measure(first, second, distance, min_overlap, tolerance):
    """Everything the report says of one pair; the ICP matrix (site frame) under "matrix" when it ran."""
    pair = {"first": first.name, "second": second.name, "overlap": {"first": 0.0, "second": 0.0},
            "distances": None, "icp": None}
    if not (len(first.local) and len(second.local) and near_boxes(first, second, distance)):
        return {**pair, "verdict": TOO_LITTLE}
    across_12, nearest_12, _ = surface_distances(first.local, second, distance + ICP_MARGIN)
    across_21, nearest_21, index_21 = surface_distances(second.local, first, distance + ICP_MARGIN)
    near_12, near_21 = nearest_12 <= distance, nearest_21 <= distance
    shares = {"first": float(near_12.mean()), "second": float(near_21.mean())}
    pair["overlap"] = shares
    if max(shares.values()) < min_overlap or min(near_12.sum(), near_21.sum()) < MIN_POINTS:
        return {**pair, "verdict": TOO_LITTLE}
    pair["distances"] = {"first_to_second": figures(across_12[near_12]),
                         "second_to_first": figures(across_21[near_21])}
    matrix, fitness, rmse = icp(second, first, distance, nearest_21)
    overlap = second.local[near_21]
    moved = overlap @ matrix[:3, :3].T + matrix[:3, 3] - overlap
    centre = overlap.mean(axis=0)
    pair["icp"] = {"translation": (matrix[:3, :3] @ centre + matrix[:3, 3] - centre).tolist(),
                   "rotation_degrees": rotation_degrees(matrix),
                   "moves_rms": float(np.sqrt(np.mean(np.sum(moved ** 2, axis=1)))),
                   "fitness": fitness, "inlier_rmse": rmse, "matrix": matrix}
    # rounded as ICP's matrix is, for the same report on every run
    pair["icp"]["conditioning"] = round(conditioning(overlap, first.normals()[index_21[near_21]]), 9)
    pair["icp"]["constrained"] = pair["icp"]["conditioning"] >= CONSTRAINED
    moves = pair["icp"]["moves_rms"] if pair["icp"]["constrained"] else 0.0  # ICP's slide along a floor means nothing
    pair["verdict"] = DISAGREES if worst_median(pair) > tolerance or moves > tolerance else AGREES
    return pair
