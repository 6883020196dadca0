"""`transform.voxel`: thins a cloud to one point per cell of a grid of cubes `cell` metres wide, anchored at whole
multiples of `cell` in world coordinates (a point's cell is floor(coordinate / cell) on each axis, in float64), so
that separate runs and items share cells. Kept points keep every attribute exactly: nothing is averaged.

- `first`: the first point of each cell, in the order the points come. Streams: each chunk is decided as it
  comes, against the cells seen before (`SeenCells`).
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
BLOCK = 4  # bits of a cell index that fall within a block: blocks of 16 x 16 x 16 cells, one bit each
BLOCK_SPAN = 1 << 20  # blocks either side of the first point's block, along each axis (21 bits of a key each)
DENSE_CELLS = 1 << 25  # cells of the dense map of `first` at most (2 bytes each: 64 MB)
DENSE_SLICE = (1 << 16) - 1  # points decided at once with the dense map (their positions + 1 fit its 16 bits)
# blocks hold 512 bytes of bits each: when there are this many and their cells are this few a block on average
# (points scattered in 3D, noise), a table of the cells' keys (32 bytes a cell) takes less memory
SCATTERED_BLOCKS, SCATTERED_CELLS = 1 << 15, 16
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


def hashed(keys, bits, salt=0):
    """Fibonacci hashing of int64 keys into `bits` bits."""
    import numpy as np
    mixed = keys.view(np.uint64) ^ np.uint64((salt * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
    mixed *= np.uint64(GOLDEN)
    mixed >>= np.uint64(64 - bits)
    return mixed.view(np.int64)


def first_of(keys):
    """For each key, the position of the first key equal to it (without sorting: keys are hashed into a table
    where the smallest position of a slot's keys stays, and keys that find another key there try again with
    another hash).

    >>> import numpy as np
    >>> first_of(np.array([7, 3, 7, 7, 3, 9])).tolist()
    [0, 1, 0, 0, 1, 5]
    """
    import numpy as np
    first = np.empty(len(keys), np.intp)
    pending, wanted, salt = np.arange(len(keys)), keys, 0
    while len(pending):
        bits = max(4, (4 * len(pending) - 1).bit_length())
        slots = hashed(wanted, bits, salt)
        owner = np.empty(1 << bits, np.intp)
        owner[slots[::-1]] = pending[::-1]  # numpy assigns in order: the smallest position is written last
        found = owner[slots]
        if (found > pending).any():  # it did not: take the smallest explicitly
            owner[slots] = len(keys)
            np.minimum.at(owner, slots, pending)
            found = owner[slots]
        same = keys[found] == wanted
        first[pending[same]] = found[same]
        other = ~same
        pending, wanted, salt = pending[other], wanted[other], salt + 1
    return first


class BlockTable:
    """Block keys (int64) to block numbers 0, 1, ... in the order they were first seen: open addressing with
    linear probing, at most half full."""

    def __init__(self, bits=10):
        import numpy as np
        self.bits = bits
        self.keys = np.full(1 << bits, EMPTY, np.int64)
        self.numbers = np.zeros(1 << bits, np.int64)
        self.count = 0

    def numbers_of(self, keys, given=None):
        """The numbers of distinct keys; new ones are numbered in the order they come (or given theirs)."""
        import numpy as np
        if (self.count + len(keys)) * 2 > len(self.keys):
            self.grow(self.count + len(keys))
        out = np.empty(len(keys), np.int64)
        new_slot = np.full(len(keys), -1, np.int64)
        mask = len(self.keys) - 1
        pending, slots, wanted = np.arange(len(keys)), hashed(keys, self.bits), keys
        while len(pending):
            there = self.keys[slots]
            done = there == wanted  # keys are distinct: this one was there before
            out[pending[done]] = self.numbers[slots[done]]
            empty = np.flatnonzero(there == EMPTY)
            if len(empty):
                self.keys[slots[empty]] = wanted[empty]
                won = empty[self.keys[slots[empty]] == wanted[empty]]  # one key takes a slot
                new_slot[pending[won]] = slots[won]
                done[won] = True
            left = np.flatnonzero(~done)
            pending, slots, wanted = pending[left], (slots[left] + 1) & mask, wanted[left]
        new = np.flatnonzero(new_slot >= 0)
        numbers = np.arange(self.count, self.count + len(new)) if given is None else given[new]
        self.numbers[new_slot[new]] = numbers
        out[new] = numbers
        self.count += len(new)
        return out

    def grow(self, needed):
        used = self.keys != EMPTY
        keys, numbers = self.keys[used], self.numbers[used]
        bits = self.bits
        while needed * 2 > 1 << bits:
            bits += 1
        self.__init__(bits)
        self.numbers_of(keys, given=numbers)


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

    def first_new(self, cells):
        """Positions (in order) of the points (cells: (3, n) int64, n < 65536, inside the box) that are the first
        of a cell not seen before; their cells are then seen. The points of cells not seen write their position
        + 1 into the map in reverse order, so that the first one's stays (and marks the cell as seen)."""
        import numpy as np
        cells = cells - self.low[:, None]
        index = cells[0] * int(self.shape[1] * self.shape[2])
        index += cells[1] * int(self.shape[2])
        index += cells[2]
        unseen = np.flatnonzero(self.map[index] == 0)
        where = index[unseen]
        tags = unseen.astype(np.uint16)
        tags += 1
        self.map[where[::-1]] = tags[::-1]  # numpy assigns in order: the smallest position is written last
        found = self.map[where]
        if (found > tags).any():  # it did not: take the smallest explicitly
            self.map[where] = np.iinfo(np.uint16).max
            np.minimum.at(self.map, where, tags)
            found = self.map[where]
        return unseen[found == tags]

    def seen(self):
        """The cells seen, as a (3, n) int64 array."""
        import numpy as np
        if self.map is None:
            return np.zeros((3, 0), np.int64)
        return np.stack(np.unravel_index(np.flatnonzero(self.map), tuple(self.shape.tolist()))) + self.low[:, None]


class SparseCells:
    """The cells seen so far, for `first`, when they spread over too many for a dense map: a bit for each cell
    of each block of 16 x 16 x 16 cells that holds a point (512 bytes a block), blocks found through a hash
    table of their keys."""

    def __init__(self, label, cell):
        import numpy as np
        self.label, self.cell = label, cell
        self.table = BlockTable()
        self.bits = np.zeros(1 << 16, np.uint8)
        self.anchor = None

    def bits_of(self, cells):
        """Each cell's bit number in `bits` (blocks not seen before are added)."""
        import numpy as np
        blocks = cells >> BLOCK
        if self.anchor is None:
            self.anchor = blocks[:, :1] - BLOCK_SPAN
        blocks -= self.anchor
        if blocks.min() < 0 or blocks.max() >= 2 * BLOCK_SPAN:
            raise StageError(f"{self.label}: the points spread over more than {2 * BLOCK_SPAN << BLOCK} cells of "
                             f"{self.cell:g} m along an axis; use a larger `cell`")
        keys = blocks[0] << 42
        keys |= blocks[1] << 21
        keys |= blocks[2]
        within = cells & ((1 << BLOCK) - 1)
        bit = within[0] << 2 * BLOCK
        bit |= within[1] << BLOCK
        bit |= within[2]
        first_block = first_of(keys)
        new_blocks = np.flatnonzero(first_block == np.arange(len(keys)))
        numbers = np.empty(len(keys), np.int64)
        numbers[new_blocks] = self.table.numbers_of(keys[new_blocks])
        needed = self.table.count << (3 * BLOCK - 3)
        if needed > len(self.bits):
            grown = np.zeros(max(needed, 2 * len(self.bits)), np.uint8)
            grown[:len(self.bits)] = self.bits
            self.bits = grown
        numbers = numbers[first_block]
        numbers <<= 3 * BLOCK
        bit |= numbers
        return bit

    def set(self, bit):
        """Sets these bits (one byte may hold several of them)."""
        import numpy as np
        byte, value = bit >> 3, np.left_shift(np.uint8(1), (bit & 7).astype(np.uint8))
        while len(byte):
            self.bits[byte] |= value  # bits of one byte given twice: one of them is lost, and set again
            lost = np.flatnonzero((self.bits[byte] & value) == 0)
            byte, value = byte[lost], value[lost]

    def first_new(self, cells):
        """As DenseCells.first_new, for any number of points."""
        import numpy as np
        bit = self.bits_of(cells)
        unseen = np.flatnonzero(((self.bits[bit >> 3] >> (bit & 7).astype(np.uint8)) & 1) == 0)
        first = first_of(bit[unseen])
        kept = unseen[first == np.arange(len(unseen))]
        self.set(bit[kept])
        self.cells += len(kept)
        return kept

    cells = 0  # cells seen

    @property
    def scattered(self):
        """True when the blocks hold so few cells each that KeyCells would take less memory."""
        return self.table.count >= SCATTERED_BLOCKS and self.cells < SCATTERED_CELLS * self.table.count

    def seen(self):
        """The cells seen, as (3, n) cell indices."""
        import numpy as np
        used = self.table.keys != EMPTY
        keys = np.empty(self.table.count, np.int64)
        keys[self.table.numbers[used]] = self.table.keys[used]
        used_bytes = np.flatnonzero(self.bits[:self.table.count << (3 * BLOCK - 3)])
        bits = np.unpackbits(self.bits[used_bytes][:, None], axis=1, bitorder="little")
        byte, within_byte = np.nonzero(bits)
        bit = (used_bytes[byte] << 3) | within_byte
        key, within = keys[bit >> 3 * BLOCK], bit & ((1 << 3 * BLOCK) - 1)
        mask = (1 << 21) - 1
        blocks = np.stack([key >> 42, (key >> 21) & mask, key & mask]) + self.anchor
        inner = np.stack([within >> 2 * BLOCK, (within >> BLOCK) & ((1 << BLOCK) - 1), within & ((1 << BLOCK) - 1)])
        return (blocks << BLOCK) | inner


class KeyCells:
    """The cells seen so far, for `first`, when they are scattered (few to a block): their keys in a few sorted
    runs, merged as in a log-structured merge tree (a run is merged into the one before it when it grows to half
    its size), so that a chunk is looked up with one binary search a run and the merges cost O(n log n) in all:
    8 bytes a cell, 16 while two runs merge."""

    def __init__(self, label, cell):
        self.label, self.cell = label, cell
        self.runs = []
        self.anchor = None

    @property
    def count(self):
        return sum(len(run) for run in self.runs)

    def keys_of(self, cells):
        if self.anchor is None:
            self.anchor = cells[:, :1] - BLOCK_SPAN
        relative = cells - self.anchor
        if relative.min() < 0 or relative.max() >= 2 * BLOCK_SPAN:
            raise StageError(f"{self.label}: the points spread over more than {2 * BLOCK_SPAN} cells of "
                             f"{self.cell:g} m along an axis; use a larger `cell`")
        keys = relative[0] << 42
        keys |= relative[1] << 21
        keys |= relative[2]
        return keys

    def add(self, cells):
        import numpy as np
        self.insert(np.unique(self.keys_of(cells)))

    def insert(self, keys):
        """Adds sorted keys seen for the first time."""
        import numpy as np
        self.runs.append(keys)
        while len(self.runs) > 1 and 2 * len(self.runs[-1]) >= len(self.runs[-2]):
            last = self.runs.pop()
            self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]), kind="stable")  # two sorted runs: a merge

    def first_new(self, cells):
        """As DenseCells.first_new, for any number of points."""
        import numpy as np
        keys = self.keys_of(cells)
        candidates = np.flatnonzero(first_of(keys) == np.arange(len(keys)))
        order = np.argsort(keys[candidates], kind="stable")
        wanted = keys[candidates[order]]  # sorted: the binary searches then walk each run in one direction
        new = np.ones(len(wanted), bool)
        for run in self.runs:
            at = np.searchsorted(run, wanted)
            np.minimum(at, len(run) - 1, out=at)
            new &= run[at] != wanted
        if new.any():
            self.insert(wanted[new])
        return np.sort(candidates[order[new]])


class SeenCells:
    """The cells seen so far, for `first`: a DenseCells map while the points' cells fit one (its box first made
    to hold the item's bounds, when they are known), then SparseCells, then KeyCells if the cells are scattered."""

    def __init__(self, cell, label, bounds=None):
        import numpy as np
        self.cell, self.label = cell, label
        self.dense, self.sparse = DenseCells(), None
        if bounds is not None:
            box = cell_indices(np.array([bounds.mins, bounds.maxs], dtype=np.float64).T, cell)
            self.dense.fits(box[:, 0], box[:, 1])

    def first_new(self, xyz):
        """Positions (in order) of the points of a chunk ((3, n) coordinates) that are the first of a cell not
        seen before; their cells are then seen."""
        import numpy as np
        cells = cell_indices(xyz, self.cell)
        if self.sparse is None and not self.dense.fits(cells.min(axis=1), cells.max(axis=1)):
            self.sparse = SparseCells(self.label, self.cell)
            seen = self.dense.seen()
            if seen.shape[1]:
                self.sparse.set(self.sparse.bits_of(seen))
            self.dense = None
        if self.sparse is not None:
            kept = self.sparse.first_new(cells)
            if isinstance(self.sparse, SparseCells) and self.sparse.scattered:
                keyed = KeyCells(self.label, self.cell)
                keyed.add(self.sparse.seen())
                self.sparse = keyed
            return kept
        kept = [self.dense.first_new(cells[:, start:start + DENSE_SLICE]) + start
                for start in range(0, cells.shape[1], DENSE_SLICE)]
        return kept[0] if len(kept) == 1 else np.concatenate(kept)


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
            return info, lambda chunks: first_points(chunks, cell, label, item, step, info.bounds)
        return info, lambda chunks: chosen_points(chunks, cell, mode, label, item, step)


def first_points(chunks, cell, label, item, step, bounds):
    from .neighbourhoods import finished
    seen = SeenCells(cell, label, bounds)
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
