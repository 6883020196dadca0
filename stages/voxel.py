"""`transform.voxel`: thins a cloud to one point per cell of a grid of cubes `cell` metres wide, anchored at whole
multiples of `cell` in world coordinates (a point's cell is floor(coordinate / cell) on each axis, in float64), so
that separate runs and items share cells. Kept points keep every attribute exactly: nothing is averaged.

- `first`: the first point of each cell, in the order the points come. Streams: each chunk is decided as it
  comes, against the cells seen before (`SeenCells`: a dense map over a small box, else a hash set of the cells'
  keys).
- `nearest`: the point nearest the mean of its cell's points (the mean summed in the points' order; among
  points at the same distance, the first).
- `center`: one point at the centre of each cell, (floor(coordinate / cell) + 0.5) * cell, with the other
  attributes of the point nearest that centre (among points at the same distance, the first).

`nearest` and `center` need every point of a cell: the item is spilled to disk and processed in tiles of whole
cells (stages.neighbourhoods), then the spilled chunks stream again with the chosen points, in their order.
"""
from pipeline.errors import StageError
from pipeline.options import Option, choice
from pipeline.stage import Transform

from .neighbourhoods import positive_number

MODES = ("first", "nearest", "center")
DENSE_CELLS = 1 << 25  # cells of the dense map of `first` at most (2 bytes each: 64 MB)
DENSE_SLICE = (1 << 16) - 1  # points decided at once with the dense map (their tags, DENSE_SLICE - position, are > 0)
KEY_BITS = (22, 22, 19)  # bits of a cell key for x, y and z: 4,194,304 cells along x and y, 524,288 along z
MAX_LOAD = 0.75  # share of HashedCells' slots that may hold a key
FIRST_BITS = 16  # HashedCells' first table: 2^16 slots (512 KB)
GROWTH = 64  # a table grows at most 64-fold at once towards the cells expected (from 2 chunks: 2^24 slots, 134 MB)
PIECE = 1 << 16  # keys added at once when a table is filled again (a piece's arrays stay in the CPU's caches)
GOLDEN = 0x9E3779B97F4A7C15  # Fibonacci hashing's multiplier
EMPTY = -1


def cell_indices(xyz, cell):
    """The (3, n) int64 cell indices of (3, n) coordinates: floor(coordinate / cell).

    >>> import numpy as np
    >>> cell_indices(np.array([[0.0, 0.09, -0.01], [1.0, 1.05, 0.1], [5.0, 5.0, 5.0]]), 0.1).tolist()
    [[0, 0, -1], [10, 10, 1], [50, 50, 50]]
    """
    import numpy as np
    indices = np.divide(xyz, cell)
    np.floor(indices, out=indices)
    return indices.astype(np.int64)


def cell_centres(xyz, cell):
    """The centre of each point's cell, (floor(coordinate / cell) + 0.5) * cell.

    >>> import numpy as np
    >>> cell_centres(np.array([[0.26], [-0.01], [3.0]]), 0.5).tolist()
    [[0.25], [-0.25], [3.25]]
    """
    import numpy as np
    centres = np.divide(xyz, cell)
    np.floor(centres, out=centres)
    centres += 0.5
    centres *= cell
    return centres


class DenseCells:
    """The cells seen so far, for `first`, as a dense map over the cells of a box that grows with the points
    (2 bytes a cell): 0 for a cell not seen. Used while the box holds at most DENSE_CELLS cells."""

    def __init__(self):
        self.low, self.shape, self.map = None, None, None

    def fits(self, low, high):
        """Makes the box hold cells low..high (int64 triples), growing it by half again on the sides that grow;
        False (and nothing changed) when it would then hold more than DENSE_CELLS cells."""
        import numpy as np
        if self.low is not None and (low >= self.low).all() and (high < self.low + self.shape).all():
            return True
        if self.low is None:
            new_low, new_high = low, high + 1
        else:
            new_low, new_high = np.minimum(low, self.low), np.maximum(high + 1, self.low + self.shape)
            span = new_high - new_low
            new_low = np.where(new_low < self.low, new_low - span // 2, new_low)
            new_high = np.where(new_high > self.low + self.shape, new_high + span // 2, new_high)
        shape = new_high - new_low
        if float(np.prod(shape.astype(np.float64))) > DENSE_CELLS:
            return False
        cells = np.zeros(tuple(shape.tolist()), np.uint16)
        if self.low is not None:
            at = self.low - new_low
            cells[at[0]:at[0] + self.shape[0], at[1]:at[1] + self.shape[1], at[2]:at[2] + self.shape[2]] = \
                self.map.reshape(tuple(self.shape.tolist()))
        self.low, self.shape, self.map = new_low, shape, cells.reshape(-1)
        return True

    def first_new(self, floors):
        """Positions (in order) of the points (floors: (3, n) floor(coordinate / cell) as float64, inside the
        box) that are the first of a cell not seen before; their cells are then seen. The points of cells not
        seen tag them with DENSE_SLICE - their position and the largest tag stays (np.maximum.at): the first
        point's, which then marks the cell as seen."""
        import numpy as np
        offset = floors - self.low[:, None]  # whole numbers below the box's shape: exact in float64
        index = offset[0] * float(self.shape[1] * self.shape[2])
        index += offset[1] * float(self.shape[2])
        index += offset[2]
        index = index.astype(np.intp)
        step = -(-len(index) // -(-len(index) // DENSE_SLICE))  # equal slices of at most DENSE_SLICE points
        kept = []
        for start in range(0, len(index), step):
            part = index[start:start + step]
            unseen = np.flatnonzero(self.map[part] == 0)
            where = part[unseen]
            tags = (DENSE_SLICE - unseen).astype(np.uint16)
            np.maximum.at(self.map, where, tags)
            kept.append(unseen[self.map[where] == tags] + start)
        return kept[0] if len(kept) == 1 else np.concatenate(kept)

    def seen(self):
        """The cells seen, as a (3, n) int64 array."""
        import numpy as np
        if self.map is None:
            return np.zeros((3, 0), np.int64)
        return np.stack(np.unravel_index(np.flatnonzero(self.map), tuple(self.shape.tolist()))) + self.low[:, None]


class HashedCells:
    """The cells seen so far, for `first`, when they spread over more than a dense map holds: a set of their
    keys (x, y and z cell indices from an anchor, KEY_BITS bits of an int64 each) by open addressing with
    linear probing, in a table at most MAX_LOAD full: 8 bytes a slot, 11 to 21 bytes a cell. A table that must
    grow is made large enough for `expected` cells at once, and every key is placed again."""

    def __init__(self, label, cell, centre):
        import numpy as np
        self.label, self.cell = label, cell
        self.spans = np.array([1 << bits for bits in KEY_BITS], np.int64)
        self.anchor = centre - self.spans // 2
        self.bits, self.count = FIRST_BITS, 0
        self.table = np.full(1 << self.bits, EMPTY, np.int64)

    def keys_of(self, cells, low, high):
        """The keys of (3, n) int64 cell indices whose least and greatest along each axis are `low` and `high`."""
        import numpy as np
        outside = (low < self.anchor) | (high >= self.anchor + self.spans)
        if outside.any():
            axis = int(np.flatnonzero(outside)[0])
            raise StageError(f"{self.label}: points lie more than {self.spans[axis] // 2} cells of {self.cell:g} m "
                             f"from the item's centre along {'xyz'[axis]} (the most a cell key holds); use a larger "
                             "`cell`")
        relative = cells - self.anchor[:, None]
        keys = relative[0] << (KEY_BITS[1] + KEY_BITS[2])
        keys |= relative[1] << KEY_BITS[2]
        keys |= relative[2]
        return keys

    def add(self, keys, expected=0):
        """Positions (in order) of the keys that are new: not in the set, and the first of theirs in `keys`;
        they are then in the set. Each round reads the slots where the keys not yet placed are; the keys at an
        empty slot each write position - n - 2 there with np.minimum.at, so that the first of them wins it and
        writes its key, and the others go on to the next slot, as do those at a slot holding another key. The
        copies of a key go from slot to slot together, so each key's first copy is the one that wins."""
        import numpy as np
        n = len(keys)
        if self.count + n > MAX_LOAD * len(self.table):
            self.grow(max(self.count + n, expected))
        table, mask = self.table, len(self.table) - 1
        slots = keys.view(np.uint64) * np.uint64(GOLDEN)
        slots >>= np.uint64(64 - self.bits)
        slots = slots.view(np.int64)
        pending, wanted = np.arange(n), keys
        new = np.zeros(n, bool)
        while len(pending):
            there = table[slots]
            empty = np.flatnonzero(there == EMPTY)
            if len(empty):
                taken, takers = slots[empty], pending[empty]
                np.minimum.at(table, taken, takers - (n + 2))  # below EMPTY and any key
                winners = table[taken] + (n + 2)
                table[taken] = there[empty] = keys[winners]
                new[takers[winners == takers]] = True
            moving = np.flatnonzero(there != wanted)
            pending, slots, wanted = pending[moving], (slots[moving] + 1) & mask, wanted[moving]
        kept = np.flatnonzero(new)
        self.count += len(kept)
        return kept

    def extend(self, keys):
        """Adds these keys, PIECE at a time."""
        if self.count + len(keys) > MAX_LOAD * len(self.table):
            self.grow(self.count + len(keys))
        for start in range(0, len(keys), PIECE):
            self.add(keys[start:start + PIECE])

    def grow(self, needed):
        """A table for at least `needed` keys, with the keys of this one."""
        import numpy as np
        keys = self.table[self.table != EMPTY]
        while needed > MAX_LOAD * (1 << self.bits):
            self.bits += 1
        self.table, self.count = np.full(1 << self.bits, EMPTY, np.int64), 0
        self.extend(keys)


class SeenCells:
    """The cells seen so far, for `first`: a DenseCells map while the points' cells fit one (its box first made
    to hold the item's bounds, when they are known), then HashedCells centred on the bounds (or on the first
    chunk's cells), grown towards the cells the item's `points` (when known) bring at the rate they came so far."""

    def __init__(self, cell, label, bounds=None, points=None):
        import numpy as np
        self.cell, self.label, self.points = cell, label, points
        self.dense, self.hashed, self.centre, self.done = DenseCells(), None, None, 0
        if bounds is not None:
            box = cell_indices(np.array([bounds.mins, bounds.maxs], dtype=np.float64).T, cell)
            self.centre = (box[:, 0] + box[:, 1]) // 2
            if not self.dense.fits(box[:, 0], box[:, 1]):
                self.dense = None  # the item's cells would not fit one

    def first_new(self, xyz):
        """Positions (in order) of the points of a chunk ((3, n) coordinates) that are the first of a cell not
        seen before; their cells are then seen."""
        import numpy as np
        if not xyz.shape[1]:
            return np.zeros(0, np.intp)
        floors = np.divide(xyz, self.cell)
        np.floor(floors, out=floors)
        low, high = floors.min(axis=1).astype(np.int64), floors.max(axis=1).astype(np.int64)
        if self.centre is None:
            self.centre = (low + high) // 2
        if self.hashed is None and (self.dense is None or not self.dense.fits(low, high)):
            self.hashed = HashedCells(self.label, self.cell, self.centre)
            seen = self.dense.seen() if self.dense is not None else np.zeros((3, 0), np.int64)
            if seen.shape[1]:
                self.hashed.extend(self.hashed.keys_of(seen, seen.min(axis=1), seen.max(axis=1)))
            self.dense = None
        if self.hashed is None:
            kept = self.dense.first_new(floors)
        else:
            count, expected = self.hashed.count, 0
            if self.points and self.done:
                expected = min(count * self.points // self.done, GROWTH * (count + xyz.shape[1]))
            kept = self.hashed.add(self.hashed.keys_of(floors.astype(np.int64), low, high), expected)
        self.done += xyz.shape[1]
        return kept


def chosen_in_cells(records, cell, mode):
    """Positions (in order) of the points a cell keeps, for points given in their original order (records with
    x, y, z) and holding every point of their cells: the point nearest the mean of its cell's points
    (`nearest`), or nearest its cell's centre (`center`); the first of those at the same distance."""
    import numpy as np
    xyz = np.stack([records["x"], records["y"], records["z"]])
    cells = cell_indices(xyz, cell)
    cells -= cells.min(axis=1, keepdims=True)
    spans = [int(v).bit_length() for v in cells.max(axis=1)]
    if sum(spans) <= 63:
        key = cells[0] << (spans[1] + spans[2])
        key |= cells[1] << spans[2]
        key |= cells[2]
        _, inverse = np.unique(key, return_inverse=True)
    else:
        _, inverse = np.unique(cells.T, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if mode == "nearest":
        counts = np.bincount(inverse)
        target = np.stack([np.bincount(inverse, weights=values) / counts for values in xyz])[:, inverse]
    else:
        target = cell_centres(xyz, cell)
    offset = xyz - target
    offset *= offset
    distance = offset[0] + offset[1]
    distance += offset[2]
    best = np.full(inverse.max() + 1, np.inf)
    np.minimum.at(best, inverse, distance)
    candidates = np.flatnonzero(distance == best[inverse])
    first = np.full(len(best), len(distance), np.intp)
    np.minimum.at(first, inverse[candidates], candidates)
    return np.sort(first)


class VoxelTransform(Transform):
    """Thins the points to one per cell of a grid anchored at whole multiples of `cell`; attributes exact.

    The first point of a cell, the one nearest its mean, or one at its centre with the attributes of the point
    nearest it."""

    drops_points = True
    options = (
        Option("cell", positive_number(), "the cells' edge in metres; cells start at whole multiples of it"),
        Option("mode", choice(*MODES), "first: the first point of each cell (streams); nearest: the point "
               "nearest the mean of its cell's points; center: one point at the cell's centre, with the other "
               "attributes of the point nearest it", default="first"),
    )

    def __init__(self, options, label=""):
        super().__init__(options, label)
        self.moves_points = self.options["mode"] == "center"

    def start(self, item, info, decision=None):
        cell, mode, label = self.options["cell"], self.options["mode"], self.label
        info = info.with_step({"stage": label, "cell": cell, "mode": mode})
        step = info.applied[-1]  # the counts are added when the item is done (see neighbourhoods.finished)
        if mode == "first":
            return info, lambda chunks: first_points(chunks, SeenCells(cell, label, info.bounds, info.point_count),
                                                     label, item, step)
        return info, lambda chunks: chosen_points(chunks, cell, mode, label, item, step)


def first_points(chunks, seen, label, item, step):
    from .neighbourhoods import finished
    points_in = points_out = 0
    for chunk in chunks:
        if len(chunk):
            kept = seen.first_new(chunk.xyz)
            points_in += len(chunk)
            points_out += len(kept)
            chunk = chunk if len(kept) == len(chunk) else chunk.take(kept)
        if len(chunk):
            yield chunk
    finished(step, label, item, points_in, points_out)


def chosen_points(chunks, cell, mode, label, item, step):
    import numpy as np
    from .neighbourhoods import Grid, Spill, Tiles, finished, workspace
    with workspace(label) as space:
        spill = Spill.of(space, chunks)
        if not spill.count:
            finished(step, label, item, 0, 0)
            return
        tiles = Tiles(space, spill, Grid.of_voxels(spill.lows, spill.highs, spill.count, cell), by_cell=False)
        keep = np.zeros(spill.count, bool)
        for t in range(len(tiles.tiles)):
            records = tiles.core(t)
            keep[records["index"][chosen_in_cells(records, cell, mode)]] = True
        points_out = 0
        for start, chunk in zip([part[0] for part in spill.parts], spill.chunks()):
            kept = np.flatnonzero(keep[start:start + len(chunk)])
            if not len(kept):
                continue
            chunk = chunk.take(kept)
            if mode == "center":
                chunk = chunk.moved(cell_centres(chunk.xyz, cell))
            points_out += len(chunk)
            yield chunk
        finished(step, label, item, spill.count, points_out)
