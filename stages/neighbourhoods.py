"""What the neighbourhood stages share (transform.voxel's `nearest` and `center` modes, transform.outliers,
transform.normals): an item's chunks spilled to a temporary folder, its points sorted into x/y tiles, each tile
computed with the points around it that its neighbourhoods need, and the per-point results applied while the
spilled chunks stream again, in their original order.

Memory does not grow with the item: what is kept per point lives on disk (the spilled chunks, a tile-ordered
copy of x, y, z and the point's position, per-point results), and memory holds one tile and its buffer at a
time, plus a few bytes a point for flags. The temporary folder comes from `tempfile.mkdtemp` and is removed in a
`finally`, also when the consumer stops early.

**Tiles.** A grid of x/y cells is laid over the item (about CELL_POINTS points a cell), and tiles are rectangles
of cells, cut in two across their longer side (near the middle of their points, where the cut crosses fewest)
until each holds at most TILE_POINTS points (or is one cell). The tile file holds the points tile after tile, the
cells of a tile row by row, and the points of a cell in their original order; so a tile is one read, and any
rectangle a handful of reads (`Tiles.points_in`).

**Results do not depend on the tiling.** A tile is computed with a buffer: the points within a distance of its
rectangle. For a radius search the buffer is the radius. For k nearest neighbours each core point's reach (an
upper bound of the distance to its k-th neighbour in the buffered cloud) is checked against its distance to the
buffer's edge; a point whose neighbourhood may reach beyond it is computed again with every point within its
reach (`knn_tiles`), so that every point gets the neighbours it would get in the whole cloud (only which of
several points at exactly the k-th distance is taken may differ, as it differs between KD-trees). Points reach
open3d relative to one origin for the whole item (`origin`): whole units near the data, which makes the
subtraction exact, so distances are the very ones open3d computes on the world coordinates, and the raw
moments open3d builds covariances from keep their precision at UTM-sized coordinates.

The stages yield no empty chunk (sink.ply cannot take one). So a consumer that stops (Ctrl-C) waits for the
stage to yield its first chunk, that is for the computation of the whole item (pipeline.background.ahead stops
its producer between chunks).
"""
import logging
import math
import os
import shutil
import tempfile
from contextlib import contextmanager

from pipeline.errors import OptionError
from pipeline.options import Kind, number

log = logging.getLogger(__name__)

TILE_POINTS = 1 << 20  # core points of a tile at most (unless one grid cell holds more); tests lower it
CELL_POINTS = 256  # points of a grid cell, on average
TILE_CELLS = 64  # cells of a tile, on average, at least (so that tiles can be split finely enough)
MAX_GRID = 2048  # cells along each axis at most
RESULT_PART = 1 << 20  # points whose results are read back at a time (PointValues)
READ_POINTS = 1 << 20  # points read at a time when the tile file is made
REPAIR_SHARE = 512  # a tile is computed again with a wider buffer when more than 1 in this many points fail
RECORD = [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("index", "<i8")]  # a point in the tile file


def positive_number():
    """An option kind: a finite number greater than 0."""
    finite = number()

    def check(value, context):
        value = finite(value, context)
        if not value > 0:
            raise OptionError(f"expected a number > 0, got {value:g}")
        return value
    return Kind("number > 0", check)


def origin(lows, highs):
    """Whole units near the data, for each axis, such that a coordinate minus it is exact in float64: the
    floor of the lowest value when every value is at least 0, the ceiling of the highest when every value is at
    most 0, else 0. Differences between points, and so distances, are then the very ones of the world
    coordinates.

    >>> origin((500000.25, 4000000.5, -3.0), (500100.0, 4000100.0, 12.0))
    (500000.0, 4000000.0, 0.0)
    >>> origin((-20.5, 0.0, -7.25), (-1.5, 3.0, -6.0))
    (-1.0, 0.0, -6.0)
    """
    return tuple(float(math.floor(lo)) if lo >= 0 else float(math.ceil(hi)) if hi <= 0 else 0.0
                 for lo, hi in zip(lows, highs))


class Workspace:
    """A temporary folder (from `tempfile.mkdtemp`) and the files opened in it: `close()` closes them and
    removes the folder."""

    def __init__(self, label):
        self.folder = tempfile.mkdtemp(prefix="pipeline-neighbourhoods-")
        self.handles = []
        log.debug("%s: temporary files in %s", label, self.folder)

    def open(self, name):
        handle = open(os.path.join(self.folder, name), "w+b")
        self.handles.append(handle)
        return handle

    def close(self):
        for handle in self.handles:
            handle.close()
        shutil.rmtree(self.folder, ignore_errors=True)


@contextmanager
def workspace(label):
    """A Workspace, removed afterwards whatever happens: an error, or a consumer that stops early (closing the
    generator that holds it)."""
    space = Workspace(label)
    try:
        yield space
    finally:
        space.close()


def read_into(handle, array, offset):
    """Fills a contiguous numpy array from a file at a byte offset."""
    view = memoryview(array.reshape(-1).view("u1"))
    done = 0
    while done < len(view):
        got = os.preadv(handle.fileno(), [view[done:]], offset + done)
        if not got:
            raise OSError(f"{handle.name}: a temporary file ends early")
        done += got


def taken(records, selection):
    """records[selection] for a structured array, taken as whole records of bytes (numpy takes a structured
    array field by field, many times slower)."""
    whole = records.view(f"V{records.dtype.itemsize}")
    return whole[selection].view(records.dtype)


def write_at(handle, array, offset):
    """Writes a contiguous numpy array into a file at a byte offset."""
    view = memoryview(array.reshape(-1).view("u1"))
    done = 0
    while done < len(view):
        done += os.pwrite(handle.fileno(), view[done:], offset + done)


class Spill:
    """An item's chunks kept in a folder: x, y, z (each chunk's (3, n) rows) in one file, and in another the
    chunk's records as they are (a reader's records and the layout that decodes them, kept in memory) and the
    columns that the records do not hold. `chunks()` gives them back, equal to what came in."""

    def __init__(self, space):
        self.xyz_file, self.data_file = space.open("xyz"), space.open("data")
        self.parts = []  # (first point, count, dtype, records (dtype, layout, offset) or None, columns, changed)
        self.count = 0
        self.lows, self.highs = [math.inf] * 3, [-math.inf] * 3

    @classmethod
    def of(cls, space, chunks):
        """Every chunk of a stream spilled into `space`, written out."""
        spill = cls(space)
        for chunk in chunks:
            spill.add(chunk)
        spill.finish()
        return spill

    def add(self, chunk):
        import numpy as np
        count = len(chunk)
        if not count:
            return
        self.xyz_file.write(np.ascontiguousarray(chunk.xyz, dtype=np.float64).reshape(-1).view(np.uint8))
        records = None
        if chunk.records is not None:
            stored = np.ascontiguousarray(chunk.records)
            records = (stored.dtype, chunk.layout, self.data_file.tell())
            self.data_file.write(stored.view(np.uint8))
        columns = []
        for name, values in chunk.columns.items():
            if chunk.records is not None and name not in chunk.changed:
                continue  # decoded from the records, and decoded again when asked for
            values = np.ascontiguousarray(values)
            columns.append((name, values.dtype, values.shape, self.data_file.tell()))
            self.data_file.write(values.reshape(-1).view(np.uint8))
        self.parts.append((self.count, count, chunk.dtype, records, columns, chunk.changed))
        self.count += count
        lows, highs = chunk.xyz.min(axis=1), chunk.xyz.max(axis=1)
        self.lows = [min(a, float(b)) for a, b in zip(self.lows, lows)]
        self.highs = [max(a, float(b)) for a, b in zip(self.highs, highs)]

    def finish(self):
        self.xyz_file.flush()
        self.data_file.flush()

    def xyz_parts(self):
        """(first point, (3, n) x, y, z) of each spilled chunk, in order."""
        import numpy as np
        offset = 0
        for start, count, *_ in self.parts:
            xyz = np.empty((3, count))
            read_into(self.xyz_file, xyz, offset)
            offset += xyz.nbytes
            yield start, xyz

    def chunks(self):
        """The spilled chunks, in order, as they came in (records and changed columns alike)."""
        import numpy as np
        from pipeline.chunk import Chunk
        for (start, count, dtype, records, columns, changed), (_, xyz) in zip(self.parts, self.xyz_parts()):
            stored, layout = None, None
            if records is not None:
                records_dtype, layout, offset = records
                stored = np.empty(count, records_dtype)
                read_into(self.data_file, stored.view(np.uint8), offset)
            values = {}
            for name, column_dtype, shape, offset in columns:
                values[name] = np.empty(shape, column_dtype)
                read_into(self.data_file, values[name].reshape(-1).view(np.uint8), offset)
            yield Chunk(xyz, dtype, values, stored, layout, changed)


class Grid:
    """A grid of x/y cells over an item: `cells(x, y)` gives each point's cell number (row * nx + column).

    Either metric (`side` metres, from `x0`, `y0`) or made of voxel columns: `voxel` metres wide cells of a grid
    anchored at whole multiples of `voxel` in world coordinates, `group` of them a side in each grid cell, so
    that a tile always holds whole voxels.
    """

    def __init__(self, nx, ny, x0=0.0, y0=0.0, side=1.0, voxel=None, group=1, i0=0, j0=0):
        self.nx, self.ny, self.x0, self.y0, self.side = nx, ny, x0, y0, side
        self.voxel, self.group, self.i0, self.j0 = voxel, group, i0, j0

    @staticmethod
    def metric(lows, highs, count):
        """A grid of square cells over these bounds, about CELL_POINTS points a cell on average, and at least
        TILE_CELLS cells for each tile's worth of points.

        >>> grid = Grid.metric((0.0, 0.0), (100.0, 50.0), 2_000_000)
        >>> grid.nx, grid.ny, grid.side
        (126, 63, 0.8)
        """
        cells = max(count / CELL_POINTS, TILE_CELLS * count / TILE_POINTS, 1.0)
        width, height = highs[0] - lows[0], highs[1] - lows[1]
        if width > 0 and height > 0:
            side = math.sqrt(width * height / cells)
        else:
            side = max(width, height) / cells if max(width, height) > 0 else 1.0
        side = max(side, width / MAX_GRID, height / MAX_GRID, 1e-9)
        nx = min(MAX_GRID, int(width / side) + 1)
        ny = min(MAX_GRID, int(height / side) + 1)
        return Grid(nx, ny, x0=lows[0], y0=lows[1], side=side)

    @staticmethod
    def of_voxels(lows, highs, count, voxel):
        """A grid of whole voxel columns (see the class), sized like `metric`'s."""
        rough = Grid.metric(lows, highs, count)
        group = max(1, int(rough.side / voxel))
        while True:
            i0, j0 = (int(math.floor(math.floor(v / voxel) / group)) for v in lows[:2])
            i1, j1 = (int(math.floor(math.floor(v / voxel) / group)) for v in highs[:2])
            if i1 - i0 < MAX_GRID and j1 - j0 < MAX_GRID:
                return Grid(i1 - i0 + 1, j1 - j0 + 1, voxel=voxel, group=group, i0=i0, j0=j0)
            group *= 2

    def columns_rows(self, x, y):
        """The column and row of each point (x, y: float64 arrays; beyond the grid: its outer cells)."""
        import numpy as np
        if self.voxel is None:
            columns, rows = (x - self.x0) / self.side, (y - self.y0) / self.side
        else:
            columns = np.floor_divide(np.floor(x / self.voxel), self.group) - self.i0
            rows = np.floor_divide(np.floor(y / self.voxel), self.group) - self.j0
        np.clip(columns, 0, self.nx - 1, out=columns)
        np.clip(rows, 0, self.ny - 1, out=rows)
        return columns.astype(np.int64), rows.astype(np.int64)

    def cells(self, x, y):
        columns, rows = self.columns_rows(x, y)
        rows *= self.nx
        rows += columns
        return rows

    def cell_range(self, low, high):
        """(first column, last column, first row, last row) of the cells that a rectangle (low, high: (x, y))
        meets, clipped to the grid."""
        import numpy as np
        columns, rows = self.columns_rows(np.array([low[0], high[0]]), np.array([low[1], high[1]]))
        return int(columns[0]), int(columns[1]), int(rows[0]), int(rows[1])

    def rectangle(self, i0, i1, j0, j1):
        """The x/y rectangle ((xmin, ymin), (xmax, ymax)) of columns i0..i1-1 and rows j0..j1-1 (nominal: the
        outer cells also hold any point beyond the grid's edge)."""
        if self.voxel is None:
            return ((self.x0 + i0 * self.side, self.y0 + j0 * self.side),
                    (self.x0 + i1 * self.side, self.y0 + j1 * self.side))
        size = self.voxel * self.group
        return (((self.i0 + i0) * size, (self.j0 + j0) * size), ((self.i0 + i1) * size, (self.j0 + j1) * size))


CUT_CELLS = 2  # rows of cells on either side of a cut whose points count against it


def best_cut(sums):
    """Where to cut a row of counts in two (the index of the first count of the second part): where the
    CUT_CELLS counts on either side of the cut are fewest (a buffer across it then holds few points: a wall is
    best not cut along), among the cuts that leave 35 to 65 % of the total on each side; the cut nearest the
    middle among equal ones.

    >>> best_cut([3, 3, 3, 3, 0, 0, 0, 9, 3, 3, 3, 3]), best_cut([4] * 8), best_cut([1, 1])
    (5, 4, 1)
    """
    import numpy as np
    sums = np.asarray(sums, dtype=np.float64)
    before = np.cumsum(sums)[:-1]  # the count before each cut 1..n-1
    total = before[-1] + sums[-1] if len(before) else sums.sum()
    cuts = np.arange(1, len(sums))
    fair = (before >= 0.35 * total) & (before <= 0.65 * total)
    if not fair.any():
        fair = np.abs(before - total / 2) == np.abs(before - total / 2).min()
    padded = np.concatenate([[0.0], np.cumsum(np.concatenate([[0.0] * CUT_CELLS, sums, [0.0] * CUT_CELLS]))])
    across = padded[cuts + 2 * CUT_CELLS] - padded[cuts]  # the CUT_CELLS rows of cells on either side
    score = np.where(fair, across, np.inf)
    best = np.flatnonzero(score == score.min())
    return int(cuts[best[np.argmin(np.abs(before[best] - total / 2))]])


def split_tiles(counts, limit):
    """Rectangles of cells (i0, i1, j0, j1: half-open columns and rows) covering a grid of point counts (rows
    by columns), each holding at most `limit` points unless it is one cell, in an order that keeps neighbours
    near each other: a rectangle is cut in two across its longer side (see best_cut). Rectangles without points
    are left out.

    >>> import numpy as np
    >>> split_tiles(np.array([[1, 1, 1, 1], [1, 1, 0, 0]]), 3)
    [(0, 1, 0, 2), (1, 2, 0, 2), (2, 4, 0, 2)]
    """
    tiles = []
    stack = [(0, counts.shape[1], 0, counts.shape[0])]
    while stack:
        i0, i1, j0, j1 = stack.pop()
        block = counts[j0:j1, i0:i1]
        total = int(block.sum())
        if total == 0:
            continue
        if total <= limit or (i1 - i0 == 1 and j1 - j0 == 1):
            tiles.append((i0, i1, j0, j1))
            continue
        along_columns = (i1 - i0 >= j1 - j0) if i1 - i0 > 1 and j1 - j0 > 1 else i1 - i0 > 1
        sums = block.sum(axis=0 if along_columns else 1)
        low = i0 if along_columns else j0
        cut = low + best_cut(sums)
        if along_columns:
            stack += [(cut, i1, j0, j1), (i0, cut, j0, j1)]
        else:
            stack += [(i0, i1, cut, j1), (i0, i1, j0, cut)]
    return tiles


class Tiles:
    """An item's points sorted into tiles (see the module's docstring): `tiles` (rectangles of cells),
    `core(t)` the points of tile t, `points_in(low, high)` those of a rectangle; points as records of RECORD
    (x, y, z and their position in the item)."""

    def __init__(self, space, spill, grid, limit=None, by_cell=True):
        import numpy as np
        self.grid, self.lows, self.highs = grid, spill.lows, spill.highs
        counts = np.zeros(grid.nx * grid.ny, np.int64)
        for _, xyz in spill.xyz_parts():
            counts += np.bincount(grid.cells(xyz[0], xyz[1]), minlength=len(counts))
        self.tiles = split_tiles(counts.reshape(grid.ny, grid.nx), limit or TILE_POINTS)
        # cells tile after tile, row by row within a tile: where each cell's points start in the tile file
        order = np.concatenate([(np.arange(j0, j1)[:, None] * grid.nx + np.arange(i0, i1)[None, :]).ravel()
                                for i0, i1, j0, j1 in self.tiles])
        self.cell_counts = counts
        self.cell_start = np.zeros(len(counts), np.int64)
        self.cell_start[order] = np.cumsum(counts[order]) - counts[order]
        self.tile_of_cell = np.full(len(counts), -1, np.int64)
        sizes = [(j1 - j0) * (i1 - i0) for i0, i1, j0, j1 in self.tiles]
        self.tile_of_cell[order] = np.repeat(np.arange(len(self.tiles)), sizes)
        first_cells = np.cumsum([0] + sizes[:-1])
        self.tile_start = self.cell_start[order[first_cells]]
        self.tile_count = np.add.reduceat(counts[order], first_cells)
        self.record = np.dtype(RECORD)
        self.file = space.open("tiles")
        self.write_by_tile(spill)
        if by_cell:
            self.sort_by_cell()

    def write_by_tile(self, spill):
        """Writes the points tile after tile, each tile's in their original order."""
        import numpy as np
        fill = self.tile_start.copy()
        small = len(self.tiles) < (1 << 16)
        for start, xyz in spill.xyz_parts():
            tile = self.tile_of_cell[self.grid.cells(xyz[0], xyz[1])]
            order = np.argsort(tile.astype(np.uint16) if small else tile, kind="stable")
            records = np.empty(len(order), self.record)
            for axis, name in enumerate("xyz"):
                records[name] = xyz[axis][order]
            records["index"] = order + start
            sorted_tiles = tile[order]
            edges = np.flatnonzero(sorted_tiles[1:] != sorted_tiles[:-1]) + 1
            for first, stop in zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(order)]))):
                t = sorted_tiles[first]
                write_at(self.file, records[first:stop], int(fill[t]) * self.record.itemsize)
                fill[t] += stop - first
        self.file.flush()

    def sort_by_cell(self):
        """Puts the points of each tile in the order of its cells (row by row), keeping their order within a
        cell: rectangles then read in a few runs, and nearby points are near in memory for open3d."""
        import numpy as np
        for t, (i0, i1, j0, j1) in enumerate(self.tiles):
            if (i1 - i0) * (j1 - j0) == 1:
                continue
            records = self.core(t)
            columns, rows = self.grid.columns_rows(records["x"], records["y"])
            rank = (rows - j0) * (i1 - i0) + (columns - i0)
            order = np.argsort(rank.astype(np.uint16) if (i1 - i0) * (j1 - j0) <= 1 << 16 else rank, kind="stable")
            write_at(self.file, taken(records, order), int(self.tile_start[t]) * self.record.itemsize)
        self.file.flush()

    def read(self, start, count):
        import numpy as np
        records = np.empty(count, self.record)
        if count:
            read_into(self.file, records, start * self.record.itemsize)
        return records

    def core(self, t):
        return self.read(int(self.tile_start[t]), int(self.tile_count[t]))

    def rectangle(self, t):
        """The tile's x/y rectangle ((xmin, ymin), (xmax, ymax)); an outer tile reaches to infinity on the
        sides where its cells hold points beyond the grid's edge."""
        i0, i1, j0, j1 = self.tiles[t]
        (xmin, ymin), (xmax, ymax) = self.grid.rectangle(i0, i1, j0, j1)
        return ((-math.inf if i0 == 0 else xmin, -math.inf if j0 == 0 else ymin),
                (math.inf if i1 == self.grid.nx else xmax, math.inf if j1 == self.grid.ny else ymax))

    def cells_in(self, low, high):
        """The numbers of the cells that the rectangle low..high meets (none when it misses the item)."""
        import numpy as np
        if not (low[0] <= self.highs[0] and low[1] <= self.highs[1] and high[0] >= self.lows[0]
                and high[1] >= self.lows[1]):
            return np.zeros(0, np.int64)
        c0, c1, r0, r1 = self.grid.cell_range(low, high)
        return (np.arange(r0, r1 + 1)[:, None] * self.grid.nx + np.arange(c0, c1 + 1)[None, :]).ravel()

    def count_in(self, low, high):
        """How many points the cells that the rectangle low..high meets hold (at least those inside it)."""
        return int(self.cell_counts[self.cells_in(low, high)].sum())

    def read_cells(self, cells):
        """The points of these cells, read in as few runs as their places in the tile file allow."""
        import numpy as np
        cells = cells[self.cell_counts[cells] > 0]
        if not len(cells):
            return self.read(0, 0)
        starts, counts = self.cell_start[cells], self.cell_counts[cells]
        order = np.argsort(starts)
        starts, counts = starts[order], counts[order]
        breaks = np.flatnonzero(starts[1:] != starts[:-1] + counts[:-1]) + 1
        run_starts = starts[np.concatenate(([0], breaks))]
        run_ends = np.concatenate((starts[breaks - 1] + counts[breaks - 1], [starts[-1] + counts[-1]]))
        records = np.empty(int(counts.sum()), self.record)
        done = 0
        for first, end in zip(run_starts.tolist(), run_ends.tolist()):
            read_into(self.file, records[done:done + end - first], first * self.record.itemsize)
            done += end - first
        return records

    def points_in(self, low, high, without_tile=None):
        """Every point with low <= (x, y) <= high (inclusive), except those of tile `without_tile`."""
        cells = self.cells_in(low, high)
        if without_tile is not None:
            cells = cells[self.tile_of_cell[cells] != without_tile]
        records = self.read_cells(cells)
        inside = ((records["x"] >= low[0]) & (records["x"] <= high[0]) & (records["y"] >= low[1])
                  & (records["y"] <= high[1]))
        return records if inside.all() else taken(records, inside)

    def nearest(self, point, k):
        """The k points nearest `point` (a record), itself included (the first of those at the same distance
        in the tile file's order), read ring of cells after ring of cells around its own until no cell left
        can hold a nearer one: memory for the points of those rings only."""
        import numpy as np
        grid = self.grid
        x, y, z = float(point["x"]), float(point["y"]), float(point["z"])
        columns, rows = grid.columns_rows(np.array([x]), np.array([y]))
        column, row = int(columns[0]), int(rows[0])
        best = self.read(0, 0)
        squared = np.zeros(0)
        for ring in range(max(grid.nx, grid.ny) + 1):
            c0, c1, r0, r1 = column - ring, column + ring, row - ring, row + ring
            across = np.arange(max(c0, 0), min(c1, grid.nx - 1) + 1)
            along = np.arange(max(r0 + 1, 0), min(r1 - 1, grid.ny - 1) + 1)
            cells = [j * grid.nx + across for j in {r0, r1} if 0 <= j < grid.ny]
            cells += [along * grid.nx + i for i in {c0, c1} if 0 <= i < grid.nx]
            cells = np.unique(np.concatenate(cells)) if cells else np.zeros(0, np.int64)
            if len(cells):
                found = self.read_cells(cells)
                distances = ((found["x"] - x) * (found["x"] - x) + (found["y"] - y) * (found["y"] - y)
                             + (found["z"] - z) * (found["z"] - z))
                best, squared = np.concatenate([best, found]), np.concatenate([squared, distances])
                order = np.argsort(squared, kind="stable")[:k]
                best, squared = taken(best, order), squared[order]
            if c0 <= 0 and r0 <= 0 and c1 >= grid.nx - 1 and r1 >= grid.ny - 1:
                break
            if len(best) == k:
                (left, bottom), (right, top) = grid.rectangle(max(c0, 0), min(c1, grid.nx - 1) + 1, max(r0, 0),
                                                              min(r1, grid.ny - 1) + 1)
                sides = [x - left if c0 > 0 else math.inf, right - x if c1 < grid.nx - 1 else math.inf,
                         y - bottom if r0 > 0 else math.inf, top - y if r1 < grid.ny - 1 else math.inf]
                margin = 1e-9 * (1 + abs(x) + abs(y))  # a point's cell may be off by a rounding at a cell's edge
                if math.sqrt(squared[-1]) < min(sides) - margin:
                    break
        return best


class PointValues:
    """Values for every point of an item, put in any order by the points' positions and read back in the
    points' order, with memory for RESULT_PART points at a time: entries go to the part of the file that holds
    their part of the positions, and a part is put in order when it is read."""

    def __init__(self, space, name, count, dtype, part=None):
        import numpy as np
        self.part = part or RESULT_PART
        self.count = count
        self.entry = np.dtype([("index", "<i8"), ("value", dtype)])
        self.dtype = np.dtype(dtype)
        self.file = space.open(name)
        self.fill = np.arange(0, count, self.part, dtype=np.int64)

    def put(self, indices, values):
        import numpy as np
        if not len(indices):
            return
        entries = np.empty(len(indices), self.entry)
        parts = indices // self.part
        order = np.argsort(parts, kind="stable")
        entries["index"] = indices[order]
        entries["value"] = values[order]
        parts = parts[order]
        edges = np.flatnonzero(parts[1:] != parts[:-1]) + 1
        for first, stop in zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(order)]))):
            p = parts[first]
            write_at(self.file, entries[first:stop], int(self.fill[p]) * self.entry.itemsize)
            self.fill[p] += stop - first

    def parts(self):
        """The values of points 0.., a part at a time, in order."""
        import numpy as np
        for p, start in enumerate(range(0, self.count, self.part)):
            size = min(self.part, self.count - start)
            if self.fill[p] != start + size:
                raise AssertionError(f"{self.file.name}: part {p} holds {self.fill[p] - start} of {size} values")
            entries = np.empty(size, self.entry)
            read_into(self.file, entries, start * self.entry.itemsize)
            values = np.empty(size, self.dtype)
            values[entries["index"] - start] = entries["value"]
            yield values


def in_order(parts):
    """A function taking n and giving the next n values of `parts` (arrays, in order), across parts."""
    import numpy as np
    parts = iter(parts)
    held = [None, 0]  # the current part and how much of it was given

    def take(count):
        pieces = []
        while count:
            if held[0] is None or held[1] == len(held[0]):
                held[0], held[1] = next(parts), 0
            piece = held[0][held[1]:held[1] + count]
            held[1] += len(piece)
            count -= len(piece)
            pieces.append(piece)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return take


def edge_distances(records, low, high, lows, highs):
    """Each point's x/y distance to the edge of the rectangle low..high, counting only the sides beyond which
    the item has points (lows, highs: the item's bounds); infinite when there is none."""
    import numpy as np
    distance = np.full(len(records), math.inf)
    x, y = records["x"], records["y"]
    for values, edge, limit, below in ((x, low[0], lows[0], True), (x, high[0], highs[0], False),
                                       (y, low[1], lows[1], True), (y, high[1], highs[1], False)):
        if below and edge > limit or not below and edge < limit:
            np.minimum(distance, values - edge if below else edge - values, out=distance)
    return distance


def local_xyz(records, centre):
    """The points' x, y, z minus `centre` (see `origin`), as one contiguous (n, 3) float64 array."""
    import numpy as np
    local = np.empty((len(records), 3))
    for axis, name in enumerate("xyz"):
        np.subtract(records[name], centre[axis], out=local[:, axis])
    return local


def typical_distance(count, low, high, lows, highs, k):
    """The distance to the k-th neighbour in a tile of `count` points over the rectangle low..high (clipped to
    the item's bounds), were they spread evenly over it."""
    width = min(high[0], highs[0]) - max(low[0], lows[0])
    height = min(high[1], highs[1]) - max(low[1], lows[1])
    if width > 0 and height > 0:
        return math.sqrt(k * width * height / (math.pi * count))
    return max(width, height, 1e-3) * k / count


def knn_tiles(tiles, centre, compute, knn=None, radius=None):
    """Computes the item's points tile by tile, each with the neighbours it has in the whole cloud; yields
    (positions of the points, results) for each tile.

    `compute(local, count)` is given a cloud (x, y, z minus `centre`, see `local_xyz`) whose first `count`
    points are to be computed, and returns (their results: an array or a tuple of arrays indexed like the
    points, their reach). With `radius`, the buffer is the radius and `reach` is ignored. For k nearest
    neighbours, `reach` is an upper bound of each point's distance to its k-th neighbour in that cloud (infinite
    when the cloud holds fewer than k points); a core point whose reach passes its distance to the edge of the
    buffered rectangle may miss a neighbour. When more than 1 in REPAIR_SHARE do, the tile is computed again
    with a buffer twice as wide; the few left are computed again (`repair`). The first buffer is a multiple of
    the typical k-th distance, the multiple learnt from the tiles before (the reach of all but 1 in 2000 of
    their points); it is narrowed while it would read more than BUFFER_POINTS points (or the tile's own number),
    but not below that reach.
    """
    import numpy as np
    factor, needed = 8.0, 0.0  # needed: the reach of all but 1 in 2000 points of the tiles before, in metres
    for t in range(len(tiles.tiles)):
        core = tiles.core(t)
        low, high = tiles.rectangle(t)

        def outer(width):
            return (low[0] - width, low[1] - width), (high[0] + width, high[1] + width)

        def affordable(width):
            return tiles.count_in(*outer(width)) - len(core) <= max(BUFFER_POINTS, len(core))

        if radius is not None:
            width = radius
        else:
            typical = typical_distance(len(core), low, high, tiles.lows, tiles.highs, knn)
            width = factor * typical
            while width / 2 > max(needed, typical / 64) and not affordable(width):
                width /= 2
        while True:
            ring = tiles.points_in(*outer(width), without_tile=t)
            cloud = np.concatenate([core, ring]) if len(ring) else core
            results, reach = compute(local_xyz(cloud, centre), len(core))
            log.debug("tile %d: %d points and %d around them, %g m wide", t, len(core), len(ring), width)
            if radius is not None:
                failing = np.zeros(0, np.int64)
                break
            failing = np.flatnonzero(~(reach <= edge_distances(core, *outer(width), tiles.lows, tiles.highs)))
            finite = reach[np.isfinite(reach)]
            if len(finite):
                needed = float(np.quantile(finite, 0.9995))
                factor = max(needed / typical, 0.5)
            if len(failing) <= max(len(core) // REPAIR_SHARE, MIN_REPAIR) or not affordable(2 * width):
                break
            width *= 2
        del cloud, ring
        if len(failing):
            log.debug("tile %d: %d of %d points computed again", t, len(failing), len(core))
            results = _replaced(results, failing, repair(tiles, centre, compute, core[failing], reach[failing],
                                                         knn, 4 * width))
        yield core["index"], results


MIN_REPAIR = 16  # points of a tile that may be computed again one by one, however small the tile
BUFFER_POINTS = 1 << 18  # points a buffer may hold beyond the tile's own number


def _replaced(results, where, values):
    if isinstance(results, tuple):
        return tuple(_replaced(r, where, v) for r, v in zip(results, values))
    results[where] = values
    return results


def repair(tiles, centre, compute, points, bounds, knn, near):
    """Results for `points` (records) whose k-th neighbour in the cloud they were computed in may have been
    wrong, given `bounds`: their reach in that cloud, an upper bound of their true k-th distance when finite.
    Those whose bound is at most `near` are computed together, in one cloud holding every point within its bound
    of each; the others (far from the rest, or from a cloud too small) each with its own k nearest points of the
    item (`Tiles.nearest`), so that memory holds no more than the points near them."""
    import numpy as np
    together = np.flatnonzero(np.isfinite(bounds) & (bounds <= near))
    alone = np.setdiff1d(np.arange(len(points)), together)
    results = None
    if len(together):
        chosen, reach = points[together], bounds[together]
        cells = tiles.grid.cells(chosen["x"], chosen["y"])
        order = np.argsort(cells, kind="stable")
        parts = []
        for group in np.split(order, np.flatnonzero(np.diff(cells[order])) + 1):  # a rectangle for each cell
            x, y, r = chosen["x"][group], chosen["y"][group], float(reach[group].max())
            parts.append(tiles.points_in((float(x.min()) - r, float(y.min()) - r),
                                         (float(x.max()) + r, float(y.max()) + r)))
        around = np.concatenate(parts)
        _, first = np.unique(around["index"], return_index=True)
        around = taken(around, first)
        around = taken(around, ~np.isin(around["index"], chosen["index"]))
        got, _ = compute(local_xyz(np.concatenate([chosen, around]), centre), len(chosen))
        results = _empty_like(got, len(points))
        _assign(results, together, got)
        log.debug("%d points computed again in a cloud of %d", len(chosen), len(chosen) + len(around))
    for index in alone:
        point = points[index]
        cloud = tiles.nearest(point, knn)
        mine = np.flatnonzero(cloud["index"] == point["index"])
        if len(mine):  # the point first
            cloud = np.concatenate([cloud[mine[0]:mine[0] + 1], np.delete(cloud, mine[0])])
        else:  # more than k points at the very place of the point: any of them will do, and it comes first
            cloud = np.concatenate([point.reshape(1), cloud[:-1]])
        got, _ = compute(local_xyz(cloud, centre), 1)
        if results is None:
            results = _empty_like(got, len(points))
        _assign(results, np.array([index]), got)
    return results


def _empty_like(got, count):
    import numpy as np
    if isinstance(got, tuple):
        return tuple(_empty_like(g, count) for g in got)
    return np.empty((count,) + got.shape[1:], got.dtype)


def _assign(results, where, got):
    if isinstance(results, tuple):
        for r, g in zip(results, got):
            _assign(r, where, g)
        return
    results[where] = got


def finished(step, label, item, points_in, points_out):
    """Records the counts in the stage's step of the report, and says so in one line when no point is left."""
    step["points_in"], step["points_out"] = points_in, points_out
    if points_in and not points_out:
        log.warning("%s: %s: no point is left (%d in)", label, item.name, points_in)
