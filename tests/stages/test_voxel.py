"""transform.voxel: `first` against numpy's first occurrences, `nearest` and `center` against a plain numpy
computation on the whole cloud; every kept point's record exact; the same output for any tiling and chunk size."""
import glob
import os
import tempfile

import laspy
import numpy as np
import pytest

from pipeline.errors import ConfigError, StageError
from stages import neighbourhoods
from stages.voxel import HashedCells, SeenCells, VoxelTransform
from tests.conftest import make_las, survey_las, through, vlr_keys

COUNT = 6000
X0, Y0 = 500_000, 4_000_000


@pytest.fixture
def survey(tmp_path):
    """Random survey points at UTM-sized coordinates, clustered so that cells hold several points."""
    rng = np.random.default_rng(21)
    centres = rng.uniform([X0, Y0, 10], [X0 + 60, Y0 + 60, 25], (400, 3))
    xyz = centres[rng.integers(0, len(centres), COUNT)] + rng.normal(0, 0.6, (COUNT, 3))
    survey_las(tmp_path / "in.las", xyz, rng)
    return tmp_path


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of at most 150 points: many tiles, and cells shared by none of them."""
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", 150)


def voxelised(folder, registry, options, chunk_size=65536, **run_options):
    return through(folder, registry, "transform.voxel", options, chunk_size, **run_options)


def coordinates(data):
    return np.stack([np.asarray(data.x), np.asarray(data.y), np.asarray(data.z)])


def expected_first(xyz, cell):
    """The first point of each cell, by numpy: first occurrences of the floor'd cell triples."""
    cells = np.floor(xyz / cell).astype(np.int64)
    _, first = np.unique(cells.T, axis=0, return_index=True)
    return np.sort(first)


def expected_chosen(xyz, cell, mode):
    """The point each cell keeps, computed on the whole cloud: nearest the mean of the cell's points (summed in
    order), or nearest the cell's centre; the first of those at the same distance."""
    cells = np.floor(xyz / cell).astype(np.int64)
    _, inverse = np.unique(cells.T, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    if mode == "nearest":
        counts = np.bincount(inverse)
        target = np.stack([np.bincount(inverse, weights=v) / counts for v in xyz])[:, inverse]
    else:
        target = (np.floor(xyz / cell) + 0.5) * cell
    d = (xyz - target) ** 2
    distance = d[0] + d[1] + d[2]
    kept = []
    for group in range(inverse.max() + 1):
        members = np.flatnonzero(inverse == group)
        kept.append(members[np.argmin(distance[members])])  # argmin: the first of equal ones
    return np.sort(kept)


@pytest.mark.parametrize("chunk_size", [64, 65536])
@pytest.mark.parametrize("cell", [0.5, 2.0])
def test_first_keeps_the_first_point_of_each_cell_with_every_record_exact(survey, registry, chunk_size, cell):
    results, path = voxelised(survey, registry, {"cell": cell}, chunk_size)
    original = laspy.read(survey / "in.las")
    kept = expected_first(coordinates(original), cell)
    written = laspy.read(path)
    assert 100 < len(kept) < COUNT - 100
    assert written.points.array.tobytes() == original.points.array[kept].tobytes()
    assert results[0].points_out == len(kept) and results[0].points_in == COUNT
    assert results[0].applied[-1] == {"stage": "stages[1] (transform.voxel)", "cell": cell, "mode": "first",
                                      "points_in": COUNT, "points_out": len(kept)}


@pytest.mark.parametrize("mode", ["nearest", "center"])
def test_nearest_and_center_keep_what_numpy_chooses_on_the_whole_cloud(survey, registry, small_tiles, mode):
    cell = 1.0
    results, path = voxelised(survey, registry, {"cell": cell, "mode": mode}, chunk_size=500)
    original = laspy.read(survey / "in.las")
    xyz = coordinates(original)
    kept = expected_chosen(xyz, cell, mode)
    written = laspy.read(path)
    assert 500 < len(kept) < COUNT - 500
    assert results[0].points_out == len(kept) == written.header.point_count
    if mode == "nearest":
        assert written.points.array.tobytes() == original.points.array[kept].tobytes()
    else:
        centres = (np.floor(xyz[:, kept] / cell) + 0.5) * cell
        assert np.allclose(coordinates(written), centres, rtol=0, atol=0.0005)  # the file's millimetres
        records = original.points.array[kept].copy()
        for axis in "XYZ":
            records[axis] = written.points.array[axis]
        assert written.points.array.tobytes() == records.tobytes()  # every other field of the nearest point


@pytest.mark.parametrize("mode", ["nearest", "center"])
def test_the_tiling_and_the_chunk_size_change_nothing(survey, registry, monkeypatch, mode):
    outputs = []
    for tile_points, chunk_size in [(100, 64), (1000, 7), (1 << 20, 65536)]:
        monkeypatch.setattr(neighbourhoods, "TILE_POINTS", tile_points)
        _, path = voxelised(survey, registry, {"cell": 0.7, "mode": mode}, chunk_size)
        outputs.append(path.read_bytes())
        path.unlink()
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize("mode", ["first", "nearest", "center"])
@pytest.mark.parametrize("name", ["las/extrabytes.las", "las/4_6_crop.las", "las/test1_4.las", "laz/autzen_trim.laz"])
def test_conformance_files_keep_every_attribute_vlr_and_extra_dimension(tmp_path, registry, conformance, small_tiles,
                                                                        name, mode):
    source = tmp_path / os.path.basename(name)
    source.write_bytes((conformance / name).read_bytes())
    cell = 2.0
    _, path = voxelised(tmp_path, registry, {"cell": cell, "mode": mode}, chunk_size=5000, name=source.name)
    original = laspy.read(source)
    xyz = coordinates(original)
    kept = expected_first(xyz, cell) if mode == "first" else expected_chosen(xyz, cell, mode)
    written = laspy.read(path)
    assert written.point_format.id == original.point_format.id
    assert list(written.point_format.extra_dimension_names) == list(original.point_format.extra_dimension_names)
    assert vlr_keys(written.header) == vlr_keys(original.header)
    records = original.points.array[kept].copy()
    if mode == "center":
        centres = (np.floor(xyz[:, kept] / cell) + 0.5) * cell
        assert np.allclose(coordinates(written), centres, rtol=0, atol=np.max(original.header.scales) / 2 + 1e-9)
        for axis in "XYZ":
            records[axis] = written.points.array[axis]
    assert written.points.array.tobytes() == records.tobytes()


def test_ply_output_keeps_the_attributes_of_the_chosen_points(survey, registry):
    from tests.plyfile_plain import read_plain_ply
    _, path = voxelised(survey, registry, {"cell": 1.5, "mode": "nearest"}, sink="ply")
    original = laspy.read(survey / "in.las")
    kept = expected_chosen(coordinates(original), 1.5, "nearest")
    vertices = read_plain_ply(path)
    assert np.array_equal(vertices["gps_time"], original.gps_time[kept])
    assert np.array_equal(vertices["x"], np.asarray(original.x)[kept])
    assert np.array_equal(vertices["return_number"], np.asarray(original.return_number)[kept])


@pytest.mark.parametrize("mode", ["first", "nearest", "center"])
def test_an_empty_item_gives_an_empty_file(survey, registry, mode):
    crop = (f"          - type: transform.crop\n            bounds: [[{X0 + 500}, {Y0}], [{X0 + 600}, {Y0 + 100}]]\n")
    results, path = voxelised(survey, registry, {"cell": 1.0, "mode": mode}, before=crop)
    written = laspy.read(path)
    assert written.header.point_count == 0 == len(written.points) == results[0].points_out
    assert results[0].applied[-1]["points_out"] == 0


def test_grid_cells_are_anchored_in_world_coordinates(tmp_path, registry):
    """Two items share cells: points at 0.04 and 0.06 of a 0.1 m grid are in different cells wherever the
    items begin, and -0.01 is in the cell below 0."""
    xyz = np.array([[X0 + 0.04, Y0, 1.0], [X0 + 0.06, Y0, 1.0], [X0 - 0.01, Y0, 1.0], [X0 + 0.09, Y0, 1.0]])
    make_las(tmp_path / "in.las", xyz, scale=0.01, point_format=1, gps_time=np.arange(4.0))
    _, path = voxelised(tmp_path, registry, {"cell": 0.1})
    assert laspy.read(path).gps_time.tolist() == [0.0, 2.0]


@pytest.mark.parametrize("options, message", [
    ({"cell": -1}, "cell: expected a number > 0, got -1"),
    ({"cell": 0}, "cell: expected a number > 0, got 0"),
    ({"cell": ".nan"}, "cell: expected a finite number, got a number nan"),
    ({"cell": 1, "mode": "centroid"}, "mode: expected one of first, nearest, center, got 'centroid'; did you mean "
                                      "'center'?"),
])
def test_bad_options_are_one_line_errors(survey, registry, options, message):
    with pytest.raises(ConfigError) as error:
        voxelised(survey, registry, options)
    assert str(error.value).endswith(f"stages[1] (transform.voxel) > {message}")
    assert len(str(error.value).splitlines()) == 1


def test_the_cell_is_required(survey, registry):
    with pytest.raises(ConfigError) as error:
        voxelised(survey, registry, {"mode": "first"})
    assert str(error.value).endswith("stages[1] (transform.voxel): missing required option 'cell' (the cells' edge "
                                     "in metres; cells start at whole multiples of it)")


# --- the pieces -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("distinct", [1, 5, 1000, 10**9])
def test_hashed_cells_keep_the_first_of_each_key_and_grow(monkeypatch, distinct):
    """Keys in chunks with copies within and across them, in a table that starts at 16 slots and grows: each
    key's first copy is new, as numpy.unique's first index says, whatever other keys share its slots."""
    from stages import voxel
    monkeypatch.setattr(voxel, "FIRST_BITS", 4)
    keys = np.random.default_rng(3).integers(0, distinct, 20000)
    cells = HashedCells("voxel", 1.0, np.zeros(3, np.int64))
    new = np.concatenate([cells.add(keys[start:start + 999]) + start for start in range(0, len(keys), 999)])
    _, first = np.unique(keys, return_index=True)
    assert np.array_equal(new, np.sort(first)) and cells.count == len(first)
    assert cells.count <= voxel.MAX_LOAD * len(cells.table) and (cells.table != voxel.EMPTY).sum() == cells.count


def test_a_hashed_table_that_grows_is_made_for_the_cells_expected():
    cells = HashedCells("voxel", 1.0, np.zeros(3, np.int64))
    cells.add(np.arange(40000, dtype=np.int64) * 7919)
    cells.add(np.arange(40000, 90000, dtype=np.int64) * 7919, expected=1_000_000)
    assert len(cells.table) == 1 << 21 and cells.count == 90000  # 1M keys fit 3/4 of 2^21 slots, not of 2^20
    assert np.array_equal(np.sort(cells.table[cells.table != -1]), np.arange(90000) * 7919)


@pytest.mark.parametrize("dense_cells", [1 << 25, 30_000, 1])
@pytest.mark.parametrize("points", [None, 40000])
def test_seen_cells_across_chunks_dense_then_hashed(monkeypatch, dense_cells, points):
    """The dense map while the cells fit it, then the hash set (the cells seen so far carried over), with
    copies of earlier points' cells in later chunks; the same points with or without the item's point count."""
    from stages import voxel
    monkeypatch.setattr(voxel, "DENSE_CELLS", dense_cells)
    monkeypatch.setattr(voxel, "DENSE_SLICE", 300)
    monkeypatch.setattr(voxel, "FIRST_BITS", 4)
    rng = np.random.default_rng(4)
    xyz = rng.uniform(-50, 50, (3, 40000)) * np.linspace(0.01, 1, 40000)  # a box that grows as points come
    xyz[:, 30000:] = xyz[:, :10000] + 0.001  # the same cells again, mostly: to be left out
    seen = SeenCells(0.5, "voxel", points=points)
    kept = np.concatenate([seen.first_new(xyz[:, start:start + 997]) + start for start in range(0, 40000, 997)])
    assert np.array_equal(kept, expected_first(xyz, 0.5))
    assert (seen.hashed is None) == (dense_cells == 1 << 25)
    if seen.hashed is not None:
        assert seen.hashed.count == len(kept)


def test_scattered_points_each_in_a_cell_of_their_own():
    """Uniform noise with 5 cm cells: nearly every point is the first of its cell."""
    rng = np.random.default_rng(5)
    xyz = rng.uniform(-100, 100, (3, 30000))
    xyz[:, 20000:] = xyz[:, :10000] + 0.001  # the same cells again but for 6% (1 mm into the next cell), left out
    seen = SeenCells(0.05, "voxel", points=30000)
    kept = np.concatenate([seen.first_new(xyz[:, start:start + 999]) + start for start in range(0, 30000, 999)])
    assert np.array_equal(kept, expected_first(xyz, 0.05)) and 20000 < len(kept) < 21000
    assert seen.dense is None and seen.hashed.count == len(kept)


def test_the_dense_map_starts_from_the_item_bounds():
    from pipeline.model import Bounds
    seen = SeenCells(0.5, "voxel", Bounds((0.0, 0.0, 0.0), (10.0, 20.0, 5.0)))
    assert seen.dense.shape.tolist() == [21, 41, 11]
    seen.first_new(np.array([[1.0, 1.1, 30.0], [1.0, 1.1, 2.0], [1.0, 1.1, 2.0]]))
    assert seen.dense.shape.tolist() == [91, 41, 11]  # grown by half again on the side that grew


def test_points_too_far_apart_for_the_cell_are_refused():
    """A cell key holds 2^21 cells either side of the item's centre along x and y, 2^18 along z (here the centre
    of the first chunk's cells)."""
    seen = SeenCells(0.001, "stages[1] (transform.voxel)")
    seen.first_new(np.zeros((3, 1)))
    seen.first_new(np.array([[2000.0], [-2000.0], [200.0]]))
    with pytest.raises(StageError, match=r"^stages\[1\] \(transform.voxel\): points lie more than 2097152 cells of "
                                         r"0.001 m from the item's centre along x \(the most a cell key holds\); use "
                                         r"a larger `cell`$"):
        seen.first_new(np.array([[2100.0], [0.0], [0.0]]))
    with pytest.raises(StageError, match=r"more than 262144 cells of 0.001 m from the item's centre along z"):
        seen.first_new(np.array([[0.0], [0.0], [-263.0]]))


def test_the_cell_keys_are_centred_on_the_item_bounds():
    """With its bounds known, an item may spread over all of a key's 4,194,304 cells along x (here 4 km of 1 mm
    cells, far too many for a dense map), whichever end its points start from."""
    from pipeline.model import Bounds
    xyz = np.array([[0.0002, 3999.9994, 3999.9996, 2000.0002], [0.5] * 4, [0.5] * 4])
    for points in (xyz, xyz[:, ::-1].copy()):
        seen = SeenCells(0.001, "voxel", Bounds((0.0, 0.0, 0.0), (4000.0, 1.0, 1.0)))
        assert seen.dense is None
        assert seen.first_new(points[:, :2]).tolist() == [0, 1] and seen.first_new(points[:, 2:]).tolist() == [1]


def test_temporary_files_are_removed_when_the_consumer_stops_early(survey, monkeypatch, tmp_path):
    """The stream function holds its temporary folder until it is done or closed."""
    from pipeline.chunk import Chunk
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = laspy.read(survey / "in.las")
    array = np.zeros(COUNT, [("x", "f8"), ("y", "f8"), ("z", "f8"), ("gps_time", "f8")])
    array["x"], array["y"], array["z"], array["gps_time"] = data.x, data.y, data.z, data.gps_time
    chunk = Chunk.of(array)
    stage = VoxelTransform({"cell": 1.0, "mode": "nearest"}, "voxel")
    from pipeline.model import Item, StreamInfo
    info, function = stage.start(Item("a", "a", 0, "a"), StreamInfo(array.dtype, "test"))
    stream = function(iter(chunk.pieces(1000)))
    next(stream)
    assert glob.glob(str(tmp_path / "pipeline-neighbourhoods-*"))
    stream.close()
    assert not glob.glob(str(tmp_path / "pipeline-neighbourhoods-*"))
    stream = function(iter(chunk.pieces(1000)))
    out = [c for c in stream if len(c)]
    assert sum(map(len, out)) == len(expected_chosen(np.stack([array["x"], array["y"], array["z"]]), 1.0, "nearest"))
    assert not glob.glob(str(tmp_path / "pipeline-neighbourhoods-*"))
