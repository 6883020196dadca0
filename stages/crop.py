"""`transform.crop`: keeps the points inside a box or a polygon (holes allowed), or those outside (PDAL's
filters.crop), in the coordinates of the frame after the stages before it. Streams: one pass over each chunk.

Points on the boundary count as inside: on a face of the box, on an edge or at a vertex of the polygon, exactly
as float64 computes it (so `outside: true` drops them). Rings and vertices are numbered from 0 in messages: ring
0 is the outer ring, the others are holes.

The polygon test is the even-odd rule (a point is inside when a ray from it crosses the rings an odd number of
times), in three steps, each for fewer points: the polygon's bounding box; a grid of cells over it, where a cell
that no edge comes near is wholly inside or wholly outside; and, for points in the other cells, an exact count
by slabs: the vertices' y values cut the plane into horizontal slabs, the edges that span one slab never cross,
so they are sorted once, left to right, and a point's crossings are counted by a binary search among its slab's
edges. Numbers are float64 throughout, relative to the polygon's first vertex.
"""
import math
import re

from pipeline.errors import OptionError
from pipeline.options import Option, anything, boolean, is_number, shown, typed
from pipeline.stage import Transform, each

AXES = "xyz"
BOUNDS_SHAPE = "[[xmin, ymin], [xmax, ymax]] or [[xmin, ymin, zmin], [xmax, ymax, zmax]]"
WKT_SHAPE = "WKT POLYGON ((x y, ...), ...)"
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
WKT = re.compile(r"\s*POLYGON\s*\((.*)\)\s*", re.IGNORECASE | re.DOTALL)
RINGS = re.compile(r"\s*\([^()]*\)\s*(?:,\s*\([^()]*\)\s*)*")
VERTEX = re.compile(rf"\s*({NUMBER})\s+({NUMBER})\s*")
PAIRS_AT_ONCE = 1 << 20  # edge pairs tested for crossings in one numpy pass
DIRECT_BLOCK = 1 << 18  # points × edges in one numpy pass of the direct test
GRID = 256  # cells a side of the grid that decides most points at once
MAX_SLAB_EDGES = 1 << 21  # (slab, edge) entries of the slab tables (4 float64 arrays); beyond: the direct test


def parse_bounds(value):
    """The lowest and the highest corner of a box given as [[xmin, ymin], [xmax, ymax]] or with z, as tuples.

    >>> parse_bounds([[0, 1], [2, 3.5]])
    ((0.0, 1.0), (2.0, 3.5))
    >>> parse_bounds([[0, 5, 0], [1, 1, 1]])
    Traceback (most recent call last):
    ...
    ValueError: ymin (5) is greater than ymax (1)
    """
    corners = typed(value)
    if (not isinstance(corners, list) or len(corners) != 2 or not all(isinstance(c, list) for c in corners)
            or len(corners[0]) != len(corners[1]) or len(corners[0]) not in (2, 3)):
        raise ValueError(f"expected {BOUNDS_SHAPE}, got {shown(value)}")
    corners = [[typed(v) for v in corner] for corner in corners]
    for corner, end in zip(corners, ("min", "max")):
        for axis, v in zip(AXES, corner):
            if not is_number(v):
                raise ValueError(f"{axis}{end} is not a number: {shown(v)}")
            if not math.isfinite(v):
                raise ValueError(f"{axis}{end} is not a finite number: {v}")
    lows, highs = corners
    for axis, low, high in zip(AXES, lows, highs):
        if low > high:
            raise ValueError(f"{axis}min ({low}) is greater than {axis}max ({high})")
    return tuple(map(float, lows)), tuple(map(float, highs))


def read_wkt(text):
    """The rings of a WKT POLYGON, each a list of (x, y) as written: the outer ring first, then the holes.

    >>> read_wkt("POLYGON ((0 0, 4 0, 4 4, 0 0), (1 1, 2 1, 1 2))")
    [[(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 0.0)], [(1.0, 1.0), (2.0, 1.0), (1.0, 2.0)]]
    >>> read_wkt("POLYGON ((0 0, 4 0, 4))")
    Traceback (most recent call last):
    ...
    ValueError: ring 0, vertex 2: expected two numbers 'x y', got '4'
    """
    match = WKT.fullmatch(text)
    if not match or not RINGS.fullmatch(match.group(1)):
        raise ValueError(f"expected {WKT_SHAPE}, got {shown(str(text))}")
    rings = []
    for r, ring_text in enumerate(re.findall(r"\(([^()]*)\)", match.group(1))):
        ring = []
        for v, vertex in enumerate(ring_text.split(",")):
            numbers = VERTEX.fullmatch(vertex)
            if not numbers:
                raise ValueError(f"ring {r}, vertex {v}: expected two numbers 'x y', got {shown(vertex.strip())}")
            ring.append((float(numbers[1]), float(numbers[2])))
        rings.append(ring)
    return rings


def read_vertex_list(value):
    """The one ring of a polygon given as a list of [x, y].

    >>> read_vertex_list([[0, 0], [1, 0], [0, 1.5]])
    [[(0.0, 0.0), (1.0, 0.0), (0.0, 1.5)]]
    """
    ring = []
    for v, vertex in enumerate(value):
        vertex = typed(vertex)
        if isinstance(vertex, list) and vertex and all(isinstance(e, list) for e in vertex):
            raise ValueError(f"ring 0, vertex {v}: expected [x, y], got a list of lists (a polygon with holes is "
                             "given as WKT: POLYGON ((outer ring), (hole), ...))")
        if not isinstance(vertex, list) or len(vertex) != 2 or not all(is_number(typed(e)) for e in vertex):
            raise ValueError(f"ring 0, vertex {v}: expected [x, y] (two numbers), got {shown(vertex)}")
        ring.append((float(typed(vertex[0])), float(typed(vertex[1]))))
    return [ring]


def polygon_rings(value):
    """The checked rings of a `polygon` option (a list of [x, y], or WKT), each an (n, 2) float64 array without
    its closing vertex or a vertex that repeats the one before it; see check_rings.

    >>> polygon_rings([[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]])[0].tolist()
    [[0.0, 0.0], [2.0, 0.0], [2.0, 2.0], [0.0, 2.0]]
    >>> polygon_rings("POLYGON ((0 0, 2 2, 2 0, 0 2))")
    Traceback (most recent call last):
    ...
    ValueError: ring 0 crosses itself: edge 0-1 and edge 2-3 meet
    """
    value = typed(value)
    if isinstance(value, str):
        rings = read_wkt(value)
    elif isinstance(value, list):
        rings = read_vertex_list(value)
    else:
        raise ValueError(f"expected a list of [x, y] or a {WKT_SHAPE} string, got {shown(value)}")
    return check_rings(rings)


def ring_name(r):
    return f"ring {r}" if r == 0 else f"ring {r} (a hole)"


def check_rings(rings):
    """Checks the rings of a polygon (lists of (x, y)) and returns them as (n, 2) float64 arrays without their
    closing vertex or repeated vertices. Every vertex must be finite; a ring needs 3 distinct vertices, must not
    cross or touch itself, and a hole must lie inside the outer ring without touching it or another hole.

    >>> check_rings([[(0, 0), (4, 0), (4, 4), (0, 4)], [(3, 1), (5, 1), (5, 2)]])
    Traceback (most recent call last):
    ...
    ValueError: ring 1 (a hole) touches or crosses ring 0: its edge 0-1 meets edge 1-2 of ring 0
    """
    import numpy as np
    arrays, numbers = [], []
    for r, ring in enumerate(rings):
        for v, (x, y) in enumerate(ring):
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError(f"ring {r}, vertex {v} is not finite: ({x}, {y})")
        distinct = len(set(ring))
        if distinct < 3:
            raise ValueError(f"ring {r} has {distinct} distinct vertices, at least 3 are needed")
        count = len(ring) - 1 if ring[0] == ring[-1] else len(ring)  # the closing vertex is optional
        kept = [v for v in range(count) if ring[v] != ring[v - 1 if v else count - 1]]
        arrays.append(np.array([ring[v] for v in kept], dtype=np.float64))
        numbers.append(kept)
    meeting = first_meeting(arrays)
    if meeting is not None:
        (r, e), (s, f), how = meeting

        def edge(ring, index):
            return f"{numbers[ring][index]}-{numbers[ring][(index + 1) % len(numbers[ring])]}"
        if r == s:
            raise ValueError(f"ring {r} crosses itself: edge {edge(r, e)} and edge {edge(s, f)} {how}")
        raise ValueError(f"{ring_name(s)} touches or crosses {ring_name(r)}: its edge {edge(s, f)} meets edge "
                         f"{edge(r, e)} of ring {r}")
    for r, ring in enumerate(arrays):
        shifted = ring - ring[0]
        if (shifted[1:-1, 0] * shifted[2:, 1] - shifted[1:-1, 1] * shifted[2:, 0]).sum() == 0:
            raise ValueError(f"ring {r} has no area: its vertices are on one line")
    for r in range(1, len(arrays)):  # nothing touches: one vertex tells on which side a whole ring lies
        if not ring_contains(arrays[0], arrays[r][0]):
            raise ValueError(f"{ring_name(r)} is not inside ring 0")
        for s in range(1, len(arrays)):
            if s != r and ring_contains(arrays[s], arrays[r][0]):
                raise ValueError(f"{ring_name(r)} is inside {ring_name(s)}: holes must not overlap")
    return arrays


def ring_contains(ring, point):
    """True when `point` is inside the ring or on its boundary (the direct test)."""
    import numpy as np
    reference = ring[0]
    inside, on_edge = direct_test(np.array([point[0] - reference[0]]), np.array([point[1] - reference[1]]),
                                  ring - reference, np.roll(ring, -1, axis=0) - reference)
    return bool(inside[0] or on_edge[0])


def segments_meet(a, b, c, d):
    """For arrays of segments a-b and c-d ((n, 2) each): True where the two closed segments share a point.

    >>> import numpy as np
    >>> segments_meet(*np.array([[[0, 0]], [[2, 2]], [[0, 2]], [[2, 0]]], dtype=float)).tolist()
    [True]
    >>> segments_meet(*np.array([[[0, 0]], [[1, 0]], [[2, 0]], [[3, 0]]], dtype=float)).tolist()
    [False]
    """
    import numpy as np

    def side(p, q, r):
        return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))

    def on(p, q, r):  # r, on the line p-q, lies between p and q
        return ((np.minimum(p[:, 0], q[:, 0]) <= r[:, 0]) & (r[:, 0] <= np.maximum(p[:, 0], q[:, 0]))
                & (np.minimum(p[:, 1], q[:, 1]) <= r[:, 1]) & (r[:, 1] <= np.maximum(p[:, 1], q[:, 1])))
    s1, s2, s3, s4 = side(a, b, c), side(a, b, d), side(c, d, a), side(c, d, b)
    return (((s1 * s2 < 0) & (s3 * s4 < 0)) | ((s1 == 0) & on(a, b, c)) | ((s2 == 0) & on(a, b, d))
            | ((s3 == 0) & on(c, d, a)) | ((s4 == 0) & on(c, d, b)))


def first_meeting(rings):
    """The first two edges of `rings` ((n, 2) arrays; edge i joins vertex i and the next) that meet, other than
    two neighbouring edges at the vertex they share: ((ring, edge), (ring, edge), 'meet' | 'overlap'), or None.
    Neighbours overlap when the second turns straight back along the first. Candidate pairs come from a sweep
    along x, so only edges whose extents overlap are tested."""
    import numpy as np
    reference = rings[0][0]
    a = np.concatenate(rings) - reference
    b = np.concatenate([np.roll(ring, -1, axis=0) for ring in rings]) - reference
    sizes = np.array([len(ring) for ring in rings])
    ring_of = np.repeat(np.arange(len(rings)), sizes)
    index = np.concatenate([np.arange(size) for size in sizes])
    total = len(a)
    following = np.arange(total) + 1  # each edge and the next one of its ring
    following[np.cumsum(sizes) - 1] -= sizes
    turn, back = b - a, b[following] - a[following]
    folds = np.flatnonzero((turn[:, 0] * back[:, 1] == turn[:, 1] * back[:, 0]) & ((turn * back).sum(axis=1) < 0))
    # a pair as one number, smallest first in the order of rings and edges (edges are numbered ring by ring)
    overlaps = np.minimum(folds, following[folds]) * total + np.maximum(folds, following[folds])
    first_overlap = int(overlaps.min()) if len(overlaps) else None
    first_meet = None
    lows, highs = np.minimum(a, b), np.maximum(a, b)
    order = np.argsort(lows[:, 0], kind="stable")
    ends = np.searchsorted(lows[order, 0], highs[order, 0], side="right")
    counts = np.maximum(ends - np.arange(1, total + 1), 0)  # later edges in the sweep that overlap in x
    done = np.concatenate([[0], np.cumsum(counts)])
    first = 0
    while first < total:
        last = max(int(np.searchsorted(done, done[first] + PAIRS_AT_ONCE, side="right")) - 1, first + 1)
        taken = counts[first:last]
        p = np.repeat(np.arange(first, last), taken)
        q = p + 1 + np.arange(len(p)) - np.repeat(done[first:last] - done[first], taken)
        e, f = order[p], order[q]
        same = ring_of[e] == ring_of[f]
        gap = np.abs(index[e] - index[f])
        neighbours = same & ((gap == 1) | (gap == sizes[ring_of[e]] - 1))
        candidates = ~neighbours & (lows[e, 1] <= highs[f, 1]) & (lows[f, 1] <= highs[e, 1])
        e, f = e[candidates], f[candidates]
        meet = segments_meet(a[e], b[e], a[f], b[f])
        if meet.any():
            pairs = np.minimum(e[meet], f[meet]) * total + np.maximum(e[meet], f[meet])
            first_meet = min(int(pairs.min()), first_meet if first_meet is not None else total * total)
        first = last
    if first_overlap is None and first_meet is None:
        return None
    if first_meet is None or first_overlap is not None and first_overlap < first_meet:
        pair, how = first_overlap, "overlap"
    else:
        pair, how = first_meet, "meet"
    e, f = divmod(pair, total)
    return (int(ring_of[e]), int(index[e])), (int(ring_of[f]), int(index[f])), how


def direct_test(px, py, a, b):
    """For points (px, py) and edges a-b ((n, 2) arrays), all relative to one reference point: whether each
    point is inside by the even-odd rule (a ray towards +x crosses the edges an odd number of times; an edge
    counts when its lower end is at or below the point and its upper end above) and whether it lies on an edge.
    Every point against every edge, in blocks: for points on a vertex's y, and polygons too large for slabs.

    >>> import numpy as np
    >>> square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]], dtype=float)
    >>> inside, on_edge = direct_test(np.array([1., 3., 2., 1.]), np.array([1., 1., 1., 2.]), square,
    ...                               np.roll(square, -1, axis=0))
    >>> inside.tolist(), on_edge.tolist()
    ([True, False, False, False], [False, False, True, True])
    """
    import numpy as np
    ax, ay, bx, by = a[:, 0], a[:, 1], b[:, 0], b[:, 1]
    low_x, high_x, low_y, high_y = np.minimum(ax, bx), np.maximum(ax, bx), np.minimum(ay, by), np.maximum(ay, by)
    inside = np.zeros(len(px), dtype=bool)
    on_edge = np.zeros(len(px), dtype=bool)
    block = max(1, DIRECT_BLOCK // len(a))
    for start in range(0, len(px), block):
        x, y = px[start:start + block, None], py[start:start + block, None]
        cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax)  # > 0: the point is left of the edge a -> b
        up = (ay <= y) & (y < by)
        down = (by <= y) & (y < ay)
        crossings = np.count_nonzero((up & (cross > 0)) | (down & (cross < 0)), axis=1)
        inside[start:start + block] = crossings % 2 == 1
        on_edge[start:start + block] = ((cross == 0) & (low_x <= x) & (x <= high_x)
                                        & (low_y <= y) & (y <= high_y)).any(axis=1)
    return inside, on_edge


class Polygon:
    """Checked rings (see check_rings) prepared for testing many points: `contains(x, y)`.

    Coordinates are taken relative to the outer ring's first vertex before any product, so that UTM-sized
    values keep their precision (the difference of two nearby float64 values is exact). A grid of GRID × GRID
    cells over the bounding box decides most points with one lookup: a cell that no edge comes near (within a
    cell) is wholly inside or wholly outside. Only the points of the other cells get the exact test: slabs
    (see the module's docstring), or every edge for a polygon too large for them.

    >>> import numpy as np
    >>> ell = Polygon(polygon_rings([[0, 0], [4, 0], [4, 1], [1, 1], [1, 4], [0, 4]]))
    >>> ell.contains(np.array([0.5, 2.0, 2.0, 4.0, 1.0]), np.array([3.0, 3.0, 0.5, 1.0, 2.5])).tolist()
    [True, False, True, True, True]
    """

    def __init__(self, rings, max_slab_edges=MAX_SLAB_EDGES, grid=GRID):
        import numpy as np
        self.reference = rings[0][0].copy()
        self.lows, self.highs = rings[0].min(axis=0), rings[0].max(axis=0)
        self.a = np.concatenate(rings) - self.reference
        self.b = np.concatenate([np.roll(ring, -1, axis=0) for ring in rings]) - self.reference
        self.prepare_slabs(max_slab_edges)
        self.prepare_grid(grid)

    def prepare_slabs(self, max_slab_edges):
        import numpy as np
        self.ys = np.unique(self.a[:, 1])  # the slab boundaries; slab s holds ys[s] <= y < ys[s + 1]
        sloped = np.flatnonzero(self.a[:, 1] != self.b[:, 1])
        upward = (self.a[sloped, 1] < self.b[sloped, 1])[:, None]
        lower = np.where(upward, self.a[sloped], self.b[sloped])
        upper = np.where(upward, self.b[sloped], self.a[sloped])
        first, stop = np.searchsorted(self.ys, lower[:, 1]), np.searchsorted(self.ys, upper[:, 1])
        spans = stop - first
        self.slabs = int(spans.sum()) <= max_slab_edges
        if not self.slabs:
            return
        edge = np.repeat(np.arange(len(sloped)), spans)  # one entry for each slab an edge spans
        slab = np.repeat(first, spans) + np.arange(len(edge)) - np.repeat(np.cumsum(spans) - spans, spans)
        middle = (self.ys[slab] + self.ys[slab + 1]) / 2
        x_middle = lower[edge, 0] + (middle - lower[edge, 1]) * (
            (upper[edge, 0] - lower[edge, 0]) / (upper[edge, 1] - lower[edge, 1]))
        order = np.lexsort((x_middle, slab))  # by slab, then left to right: edges in a slab never cross
        edge = edge[order]
        self.counts = np.bincount(slab, minlength=len(self.ys))  # the last "slab", at ys[-1], holds none
        self.starts = np.cumsum(self.counts) - self.counts
        self.x0, self.y0 = lower[edge, 0], lower[edge, 1]
        self.dx, self.dy = upper[edge, 0] - self.x0, upper[edge, 1] - self.y0
        self.top_step = 1 << (int(self.counts.max()).bit_length() - 1)

    def prepare_grid(self, size):
        """The grid's cells: 0 wholly outside, 1 wholly inside, 2 near an edge. Each edge marks the cells it
        passes through, column by column, and then every cell next to a marked one is marked too, so that no
        rounding of a point's cell or of an edge's path can put a point near an edge in an unmarked cell."""
        import numpy as np
        self.size = size
        self.grid_low = self.lows - self.reference  # computed as the points' coordinates are
        self.grid_scale = size / (self.highs - self.reference - self.grid_low)
        ua, va = ((self.a - self.grid_low) * self.grid_scale).T
        ub, vb = ((self.b - self.grid_low) * self.grid_scale).T
        u_low, u_high = np.minimum(ua, ub), np.maximum(ua, ub)
        first = np.clip(np.floor(u_low).astype(np.intp), 0, size - 1)
        spans = np.clip(np.floor(u_high).astype(np.intp), 0, size - 1) - first + 1
        edge = np.repeat(np.arange(len(ua)), spans)  # (edge, column) for every column an edge crosses
        column = np.repeat(first, spans) + np.arange(len(edge)) - np.repeat(np.cumsum(spans) - spans, spans)
        left = np.maximum(column, u_low[edge])
        right = np.minimum(column + 1.0, u_high[edge])
        width = ub[edge] - ua[edge]
        flat = width == 0
        slope = (vb[edge] - va[edge]) / np.where(flat, 1.0, width)
        v_left = np.where(flat, va[edge], va[edge] + (left - ua[edge]) * slope)
        v_right = np.where(flat, vb[edge], va[edge] + (right - ua[edge]) * slope)
        rows = np.clip(np.floor(np.sort([v_left, v_right], axis=0)).astype(np.intp), 0, size - 1)
        change = np.zeros((size + 1, size), dtype=np.int64)  # by row, then column: +1 where a run starts
        np.add.at(change, (rows[0], column), 1)
        np.add.at(change, (rows[1] + 1, column), -1)
        near = np.cumsum(change, axis=0)[:size] > 0
        grown = near.copy()
        grown[1:] |= near[:-1]
        grown[:-1] |= near[1:]
        near = grown.copy()
        near[:, 1:] |= grown[:, :-1]
        near[:, :-1] |= grown[:, 1:]
        cells = np.where(near, 2, self.centres_inside()).astype(np.int8)
        self.cells = cells.ravel()

    def centres_inside(self):
        """Whether each cell's centre is inside, row by row: where the edges cross the row's middle line. A
        centre of a cell far from every edge is far from every crossing, so rounding cannot matter."""
        import numpy as np
        centres = (np.arange(self.size) + 0.5) / self.grid_scale[:, None] + self.grid_low[:, None]
        ax, ay, bx, by = self.a[:, 0], self.a[:, 1], self.b[:, 0], self.b[:, 1]
        inside = np.empty((self.size, self.size), dtype=bool)
        for row, y in enumerate(centres[1]):
            crossing = np.flatnonzero((ay <= y) != (by <= y))
            xs = ax[crossing] + (y - ay[crossing]) * (bx[crossing] - ax[crossing]) / (by[crossing] - ay[crossing])
            inside[row] = np.searchsorted(np.sort(xs), centres[0]) % 2 == 1
        return inside

    def contains(self, x, y):
        """A mask of the points (x, y: float64 arrays) inside the polygon or on its boundary."""
        import numpy as np
        mask = x >= self.lows[0]
        for values, bound, compare in ((x, self.highs[0], np.less_equal), (y, self.lows[1], np.greater_equal),
                                       (y, self.highs[1], np.less_equal)):
            np.logical_and(mask, compare(values, bound), out=mask)
        inside_box = np.flatnonzero(mask)
        if len(inside_box) == len(x):
            mask[:] = self.relative(x - self.reference[0], y - self.reference[1])
        elif len(inside_box):
            mask[inside_box] = self.relative(x[inside_box] - self.reference[0], y[inside_box] - self.reference[1])
        return mask

    def relative(self, px, py):
        """The test for points given relative to the reference point, all inside the bounding box."""
        import numpy as np
        cell = np.empty(len(px), dtype=np.intp)
        for axis, values in ((1, py), (0, px)):
            index = values - self.grid_low[axis]
            index *= self.grid_scale[axis]
            index = index.astype(np.intp)  # truncation: at least 0 inside the box
            np.minimum(index, self.size - 1, out=index)
            if axis:
                np.multiply(index, self.size, out=cell)
            else:
                cell += index
        state = self.cells[cell]
        result = state == 1
        near = np.flatnonzero(state == 2)
        if len(near):
            result[near] = self.exact(px[near], py[near])
        return result

    def exact(self, px, py):
        """The exact test (inside, or on an edge) for points given relative to the reference point."""
        import numpy as np
        if not self.slabs:
            inside, on_edge = direct_test(px, py, self.a, self.b)
            return inside | on_edge
        slab = np.searchsorted(self.ys, py, side="right") - 1
        np.maximum(slab, 0, out=slab)
        start, count = self.starts[slab], self.counts[slab]
        last = len(self.x0) - 1
        left = np.zeros(len(px), dtype=np.intp)  # how many of the slab's edges lie left of the point
        step = self.top_step
        while step:
            candidate = left + step
            entry = start + candidate - 1
            np.minimum(entry, last, out=entry)
            right_of = self.cross(entry, px, py) < 0
            right_of &= candidate <= count
            np.add(left, step, out=left, where=right_of)
            step >>= 1
        result = (left & 1).astype(bool)
        entry = start + left
        np.minimum(entry, last, out=entry)
        on_edge = self.cross(entry, px, py) == 0
        on_edge &= left < count
        result |= on_edge
        on_line = np.flatnonzero(py == self.ys[slab])  # at a vertex's y: horizontal edges and vertices too
        if len(on_line):
            inside, on_edge = direct_test(px[on_line], py[on_line], self.a, self.b)
            result[on_line] = inside | on_edge
        return result

    def cross(self, entry, px, py):
        """> 0 where the point is left of the slab entry's edge (taken upwards), 0 on its line, < 0 right."""
        cross = py - self.y0[entry]
        cross *= self.dx[entry]
        other = px - self.x0[entry]
        other *= self.dy[entry]
        cross -= other
        return cross


def inside_box(xyz, lows, highs):
    """A mask of the points ((3, n) float64) inside the box or on its faces (2 or 3 axes)."""
    import numpy as np
    mask = xyz[0] >= lows[0]
    np.logical_and(mask, xyz[0] <= highs[0], out=mask)
    for axis in range(1, len(lows)):
        np.logical_and(mask, xyz[axis] >= lows[axis], out=mask)
        np.logical_and(mask, xyz[axis] <= highs[axis], out=mask)
    return mask


class CropTransform(Transform):
    """Keeps the points inside a box or a polygon (holes allowed), or those outside; every attribute kept."""

    drops_points = True
    options = (
        Option("bounds", anything(BOUNDS_SHAPE), "the box (points on its faces are inside)", default=None),
        Option("polygon", anything(f"list of [x, y], or {WKT_SHAPE}"),
               "the polygon, instead of `bounds`: one ring as a list of vertices, or WKT with holes (points on "
               "an edge or a vertex are inside)", default=None),
        Option("outside", boolean(), "keep the points outside instead", default=False),
    )

    @classmethod
    def check(cls, options):
        cls.region_of(options)

    @staticmethod
    def region_of(options):
        """(lows, highs) of the box, or the checked rings of the polygon."""
        if options["bounds"] is None and options["polygon"] is None:
            raise OptionError("give `bounds` or `polygon`", "bounds")
        if options["bounds"] is not None and options["polygon"] is not None:
            raise OptionError("give either `bounds` or `polygon`, not both", "polygon")
        name = "bounds" if options["bounds"] is not None else "polygon"
        try:
            return parse_bounds(options["bounds"]) if name == "bounds" else polygon_rings(options["polygon"])
        except ValueError as error:
            raise OptionError(str(error), name) from None

    def __init__(self, options, label=""):
        super().__init__(options, label)
        region = self.region_of(self.options)
        self.box = region if self.options["bounds"] is not None else None
        self.polygon = Polygon(region) if self.box is None else None

    def start(self, item, info, decision=None):
        import numpy as np
        box, polygon, outside = self.box, self.polygon, self.options["outside"]
        if box is not None:
            step = {"stage": self.label, "bounds": [list(box[0]), list(box[1])], "outside": outside}
        else:
            given = typed(self.options["polygon"])
            given = str(given) if isinstance(given, str) else [[float(typed(v)) for v in p] for p in given]
            step = {"stage": self.label, "polygon": given, "outside": outside}

        def function(chunk):
            if not len(chunk):
                return chunk
            mask = inside_box(chunk.xyz, *box) if box is not None else polygon.contains(chunk.xyz[0], chunk.xyz[1])
            if outside:
                np.logical_not(mask, out=mask)
            kept = np.flatnonzero(mask)  # indices: one pass over the mask, not one for each array taken from
            if len(kept) == len(chunk):
                return chunk
            return chunk.take(kept)

        return info.with_step(step), each(function)
