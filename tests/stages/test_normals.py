"""transform.normals: normals against open3d's estimate_normals on the whole cloud (within 0.001 rad, up to
orientation), curvatures against numpy's eigenvalues of the neighbours' covariance, the same output for any
tiling, every attribute and VLR of the input kept."""
import os
from contextlib import contextmanager

import laspy
import numpy as np
import open3d
import pytest

from pipeline.errors import ConfigError
from stages import neighbourhoods
from tests.conftest import make_las, survey_las, through, vlr_keys

COUNT = 6000
X0, Y0 = 500_000, 4_000_000
ADDED = ["normal_x", "normal_y", "normal_z", "curvature"]


def surfaces(count, rng, size=40.0):
    """Survey-like points: undulating ground and two walls, with a few millimetres of noise."""
    ground = count * 3 // 4
    x, y = rng.uniform(0, size, ground), rng.uniform(0, size, ground)
    z = 0.4 * np.sin(x / 5) + 0.3 * np.cos(y / 3) + rng.normal(0, 0.003, ground)
    along, up = rng.uniform(0, size, count - ground), rng.uniform(0, 6, count - ground)
    first = np.arange(count - ground) % 2 == 0
    wx = np.where(first, along, 12.0 + rng.normal(0, 0.003, count - ground))
    wy = np.where(first, 25.0 + rng.normal(0, 0.003, count - ground), along)
    xyz = np.column_stack([np.concatenate([x, wx]) + X0, np.concatenate([y, wy]) + Y0, np.concatenate([z, up]) + 30])
    return xyz[rng.permutation(count)]


@pytest.fixture
def survey(tmp_path):
    """Random survey points at UTM-sized coordinates, stored at micrometres: no two neighbours of a point lie at
    exactly the same distance from it, so every KD-tree finds the same neighbours."""
    rng = np.random.default_rng(31)
    xyz = surfaces(COUNT, rng)
    survey_las(tmp_path / "in.las", xyz, rng, scale=1e-6)
    return tmp_path


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", 300)


def with_normals(folder, registry, options, chunk_size=65536, **run_options):
    return through(folder, registry, "transform.normals", options, chunk_size, **run_options)


def coordinates(data):
    return np.column_stack([np.asarray(data.x), np.asarray(data.y), np.asarray(data.z)])


def open3d_normals(xyz, search):
    """open3d's own normals for the whole cloud (x, y, z minus whole metres near them, as any caller must do at
    UTM-sized coordinates: open3d's covariances come from raw moments)."""
    cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(xyz - np.floor(xyz.min(axis=0))))
    cloud.estimate_normals(search)
    return np.asarray(cloud.normals)


def neighbours(xyz, knn=None, radius=None):
    """Each point's neighbours in the whole cloud (open3d's tensor search, independent of the stage's tiles):
    (indices, their count) for a radius; for k nearest, also whether the k-th and the next lie at the same
    distance (then which one a KD-tree takes is its own choice)."""
    local = open3d.core.Tensor(xyz - np.floor(xyz.min(axis=0)))
    search = open3d.core.nns.NearestNeighborSearch(local)
    if radius is not None:
        search.fixed_radius_index(radius)
        indices, distances, splits = search.fixed_radius_search(local, radius)
        return indices.numpy(), splits.numpy()
    search.knn_index()
    indices, distances = search.knn_search(local, min(knn + 1, len(xyz)))
    indices, distances = indices.numpy(), distances.numpy()
    tied = distances[:, knn - 1] == distances[:, knn] if distances.shape[1] > knn else np.zeros(len(xyz), bool)
    return indices[:, :knn], tied


def numpy_curvature(xyz, groups):
    """λ0 / (λ0 + λ1 + λ2) of the covariance (1/k, as open3d) of each point's neighbours, by numpy's eigvalsh."""
    local = xyz - xyz.mean(axis=0)
    values = []
    for group in groups:
        points = local[group]
        centred = points - points.mean(axis=0)
        eigen = np.linalg.eigvalsh(centred.T @ centred / len(points))
        values.append(max(eigen[0], 0) / eigen.sum() if len(points) >= 3 and eigen.sum() > 0 else np.nan)
    return np.array(values)


def angles(a, b):
    """Angles between normals, up to orientation."""
    cos = np.abs((a * b).sum(axis=1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return np.arccos(np.clip(cos, 0, 1))


def assert_same_records(written, original):
    """Every field of the input's records, value by value (the output's records hold the normals too)."""
    for name in original.points.array.dtype.names:
        assert written.points.array[name].tobytes() == original.points.array[name].tobytes(), name


def written_normals(data):
    return np.column_stack([np.asarray(data[name], dtype=np.float64) for name in ADDED[:3]])


@pytest.mark.parametrize("search", ["knn 8", "knn 20", "radius 1.2"])
def test_normals_and_curvature_agree_with_open3d_and_numpy_on_the_whole_cloud(survey, registry, small_tiles, search):
    kind, value = search.split()
    options = {kind: value, "orient": "none"}
    results, path = with_normals(survey, registry, options, chunk_size=700)
    original, written = laspy.read(survey / "in.las"), laspy.read(path)
    xyz = coordinates(original)
    if kind == "knn":
        reference = open3d_normals(xyz, open3d.geometry.KDTreeSearchParamKNN(int(value)))
        groups, tied = neighbours(xyz, knn=int(value))
        assert not tied.any()
    else:
        reference = open3d_normals(xyz, open3d.geometry.KDTreeSearchParamRadius(float(value)))
        indices, splits = neighbours(xyz, radius=float(value))
        groups = [indices[splits[i]:splits[i + 1]] for i in range(len(xyz))]
    assert angles(written_normals(written), reference).max() < 1e-3
    expected = numpy_curvature(xyz, groups)
    assert np.allclose(np.asarray(written.curvature), expected, rtol=1e-4, atol=1e-7, equal_nan=True)
    assert 1e-6 < np.nanmedian(expected) < 0.01  # surfaces: flat neighbourhoods, yet not exactly planar
    assert results[0].points_out == COUNT
    assert results[0].applied[-1] == {"stage": "stages[1] (transform.normals)",
                                      kind: float(value) if kind == "radius" else int(value), "orient": "none",
                                      "points_in": COUNT, "points_out": COUNT}


def test_every_attribute_and_vlr_is_kept_and_the_normals_are_extra_bytes(survey, registry):
    _, path = with_normals(survey, registry, {})
    original, written = laspy.read(survey / "in.las"), laspy.read(path)
    assert written.point_format.id == original.point_format.id
    assert list(written.point_format.extra_dimension_names) == ADDED
    assert_same_records(written, original)
    for name in ADDED:
        assert written.points.array.dtype[name] == np.float32
    normals = written_normals(written)
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("orient, check", [
    ("up", lambda normals, xyz: (normals[:, 2] >= 0).all()),
    ("viewpoint", lambda normals, xyz: ((normals * (np.array([X0 + 20, Y0 + 20, 45.0]) - xyz)).sum(axis=1) >= 0).all()),
])
def test_orientation(survey, registry, orient, check):
    options = {"orient": orient}
    if orient == "viewpoint":
        options["viewpoint"] = f"[{X0 + 20}, {Y0 + 20}, 45.0]"
    _, path = with_normals(survey, registry, options)
    written = laspy.read(path)
    normals, xyz = written_normals(written), coordinates(written)
    assert check(normals, xyz)
    reference = open3d_normals(coordinates(laspy.read(survey / "in.las")), open3d.geometry.KDTreeSearchParamKNN(8))
    assert angles(normals, reference).max() < 1e-3


def test_the_tiling_and_the_chunk_size_change_nothing(survey, registry, monkeypatch):
    """The same points (LAS records) and the same PLY bytes. (LAS headers differ: laspy's statistics of an
    extra-bytes dimension are those of the first point of each batch it is given.)"""
    outputs = []
    for tile_points, chunk_size, repair_share in [(200, 64, 1), (1500, 999, 256), (1 << 20, 65536, 256)]:
        monkeypatch.setattr(neighbourhoods, "TILE_POINTS", tile_points)
        monkeypatch.setattr(neighbourhoods, "REPAIR_SHARE", repair_share)  # 1: every failing point repaired alone
        _, las = with_normals(survey, registry, {"knn": 12}, chunk_size)
        _, ply = with_normals(survey, registry, {"knn": 12}, chunk_size, sink="ply")
        outputs.append((laspy.read(las).points.array.tobytes(), ply.read_bytes()))
        las.unlink()
        ply.unlink()
    assert outputs[0] == outputs[1] == outputs[2]


def test_isolated_points_get_their_neighbours_wherever_they_are(tmp_path, registry, small_tiles, monkeypatch):
    """Points far from the others (and tiles holding fewer than k points) are computed again with every point
    within their reach: the same normals as on the whole cloud."""
    monkeypatch.setattr(neighbourhoods, "MIN_REPAIR", 1)
    rng = np.random.default_rng(8)
    xyz = np.concatenate([surfaces(2000, rng, size=20.0),
                          [[X0 + 60, Y0 + 3, 31.0], [X0 - 25, Y0 + 50, 29.0], [X0 + 45, Y0 - 30, 33.5]]])
    make_las(tmp_path / "in.las", xyz, scale=1e-6, point_format=1, gps_time=np.arange(len(xyz), dtype=float))
    _, path = with_normals(tmp_path, registry, {"knn": 6, "orient": "none"})
    written = laspy.read(path)
    reference = open3d_normals(coordinates(laspy.read(tmp_path / "in.las")), open3d.geometry.KDTreeSearchParamKNN(6))
    assert angles(written_normals(written), reference).max() < 1e-3


def test_an_item_with_fewer_points_than_knn(tmp_path, registry):
    xyz = np.array([[X0, Y0, 1.0], [X0 + 1, Y0, 1.0], [X0, Y0 + 1, 1.1], [X0 + 1, Y0 + 1, 1.0], [X0 + 2, Y0, 0.9]])
    make_las(tmp_path / "in.las", xyz, point_format=0)
    _, path = with_normals(tmp_path, registry, {"orient": "none"})
    reference = open3d_normals(xyz, open3d.geometry.KDTreeSearchParamKNN(8))
    assert angles(written_normals(laspy.read(path)), reference).max() < 1e-3


def test_points_with_fewer_than_3_neighbours_within_the_radius(tmp_path, registry):
    """open3d gives them the normal (0, 0, 1); their curvature is not defined: NaN."""
    xyz = np.array([[X0, Y0, 1.0], [X0 + 0.1, Y0, 1.0], [X0, Y0 + 0.1, 1.0], [X0 + 5, Y0, 1.0], [X0 + 5.1, Y0, 1.0]])
    make_las(tmp_path / "in.las", xyz, point_format=0)
    _, path = with_normals(tmp_path, registry, {"radius": 0.5, "orient": "up"})
    written = laspy.read(path)
    assert written_normals(written)[3:].tolist() == [[0, 0, 1], [0, 0, 1]]
    assert np.isnan(written.curvature[3:]).all() and np.isfinite(written.curvature[:3]).all()


@pytest.mark.parametrize("name", ["las/4_6_crop.las", "laz/autzen_trim.laz"])
def test_conformance_files(tmp_path, registry, conformance, name, monkeypatch):
    """Real scans, stored at centimetres: where a point's k-th and next neighbours lie at the same distance,
    which one a KD-tree takes is its own choice, so those points are left out of the comparison."""
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", 5000)
    source = tmp_path / os.path.basename(name)
    source.write_bytes((conformance / name).read_bytes())
    _, path = with_normals(tmp_path, registry, {"orient": "none"}, chunk_size=10000, name=source.name)
    original, written = laspy.read(source), laspy.read(path)
    xyz = coordinates(original)
    reference = open3d_normals(xyz, open3d.geometry.KDTreeSearchParamKNN(8))
    _, tied = neighbours(xyz, knn=8)
    assert tied.mean() < 0.2
    assert angles(written_normals(written)[~tied], reference[~tied]).max() < 1e-3
    assert_same_records(written, original)
    kept = [key for key in vlr_keys(written.header) if key[1] != 4]  # the extra-bytes VLR gained the normals
    assert kept == [key for key in vlr_keys(original.header) if key[1] != 4]


def test_ply_output_has_normals_that_open3d_reads(survey, registry):
    _, path = with_normals(survey, registry, {}, sink="ply")
    cloud = open3d.io.read_point_cloud(str(path))
    assert cloud.has_normals() and len(cloud.normals) == COUNT
    header = path.read_bytes().split(b"end_header")[0].decode()
    assert "property float nx\nproperty float ny\nproperty float nz\nproperty float curvature\n" in header
    reference = open3d_normals(coordinates(laspy.read(survey / "in.las")), open3d.geometry.KDTreeSearchParamKNN(8))
    assert angles(np.asarray(cloud.normals), reference).max() < 1e-3


def test_an_empty_item_gives_an_empty_file_with_the_new_dimensions(survey, registry):
    crop = f"          - type: transform.crop\n            bounds: [[{X0 + 500}, {Y0}], [{X0 + 600}, {Y0 + 100}]]\n"
    results, path = with_normals(survey, registry, {}, before=crop)
    written = laspy.read(path)
    assert written.header.point_count == 0 == results[0].points_out
    assert list(written.point_format.extra_dimension_names) == ADDED


@pytest.mark.parametrize("options, message", [
    ({"knn": 0}, "knn: expected an integer >= 3, got 0"),
    ({"knn": 2}, "knn: expected an integer >= 3, got 2"),
    ({"knn": 8, "radius": 0.5}, "radius: give either `knn` or `radius`, not both"),
    ({"radius": -1}, "radius: expected a number > 0, got -1"),
    ({"orient": "down"}, "orient: expected one of up, viewpoint, none, got 'down'"),
    ({"orient": "viewpoint"}, "orient: `orient: viewpoint` needs `viewpoint: [x, y, z]`"),
    ({"viewpoint": "[1, 2, 3]"}, "viewpoint: `viewpoint` is used only with `orient: viewpoint`"),
    ({"orient": "viewpoint", "viewpoint": "[1, 2]"},
     "viewpoint: expected [x, y, z] (three finite numbers), got [1, 2]"),
])
def test_bad_options_are_one_line_errors(survey, registry, options, message):
    with pytest.raises(ConfigError) as error:
        with_normals(survey, registry, options)
    assert str(error.value).endswith(f"stages[1] (transform.normals) > {message}")
    assert len(str(error.value).splitlines()) == 1


# --- the k-nearest-neighbour tiles (stages.neighbourhoods.knn_tiles), against brute force ------------------------

def brute_force(knn):
    """A `compute` for knn_tiles: each point's distances to its k nearest points of the cloud (itself included),
    summed, and the k-th of them as its reach (exact; infinite when the cloud holds fewer than k points)."""
    def compute(local, count):
        distances = np.sqrt(((local[:count, None, :] - local[None, :, :]) ** 2).sum(axis=2))
        distances.sort(axis=1)
        nearest = distances[:, :knn]
        reach = nearest[:, -1] if local.shape[0] >= knn else np.full(count, np.inf)
        return (nearest.sum(axis=1), nearest[:, -1].copy()), reach
    return compute


@pytest.fixture
def clusters():
    """Clusters of very different densities, and points alone far away; each point's distances to its 7 nearest
    points of the whole cloud, summed, and the 7th."""
    rng = np.random.default_rng(9)
    xyz = np.concatenate([rng.normal([X0, Y0, 10], [3, 3, 0.2], (900, 3)),
                          rng.normal([X0 + 30, Y0 - 20, 12], [0.3, 8, 2], (400, 3)),
                          rng.uniform([X0 - 80, Y0 - 80, 0], [X0 + 80, Y0 + 80, 30], (12, 3))]).T
    (sums, kth), _ = brute_force(7)(xyz.T.copy(), xyz.shape[1])
    return xyz, sums, kth


@contextmanager
def tiled(xyz):
    from pipeline.chunk import Chunk
    from stages.neighbourhoods import Grid, Spill, Tiles, origin, workspace
    array = np.zeros(xyz.shape[1], [("x", "f8"), ("y", "f8"), ("z", "f8")])
    array["x"], array["y"], array["z"] = xyz
    with workspace("test") as space:
        spill = Spill(space)
        for piece in Chunk.of(array).pieces(97):
            spill.add(piece)
        spill.finish()
        yield Tiles(space, spill, Grid.metric(spill.lows, spill.highs, spill.count)), origin(spill.lows, spill.highs)


@pytest.mark.parametrize("tile_points, repair_share, buffer_points", [
    (40, 1, 1 << 18),  # every failing point computed again on its own
    (40, 256, 1 << 18),  # buffers doubled until few fail
    (300, 256, 30),  # buffers held to 30 points beyond the tile's own
    (100_000, 256, 1 << 18),  # one tile
])
def test_knn_tiles_give_every_point_the_neighbours_of_the_whole_cloud(monkeypatch, clusters, tile_points,
                                                                     repair_share, buffer_points):
    from stages.neighbourhoods import knn_tiles
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", tile_points)
    monkeypatch.setattr(neighbourhoods, "REPAIR_SHARE", repair_share)
    monkeypatch.setattr(neighbourhoods, "BUFFER_POINTS", buffer_points)
    xyz, expected_sum, expected_kth = clusters
    got_sum, got_kth = np.full(xyz.shape[1], np.nan), np.full(xyz.shape[1], np.nan)
    with tiled(xyz) as (tiles, centre):
        assert (len(tiles.tiles) > 5) == (tile_points < 1000)
        for positions, (sums, kth) in knn_tiles(tiles, centre, brute_force(7), knn=7):
            got_sum[positions], got_kth[positions] = sums, kth
    assert np.allclose(got_kth, expected_kth, rtol=1e-12) and np.allclose(got_sum, expected_sum, rtol=1e-12)


@pytest.mark.parametrize("bounds", ["none", "loose", "some"])
def test_repair_gives_the_whole_cloud_s_results(monkeypatch, clusters, bounds):
    """Points with a bound on their k-th distance are computed together, in a cloud of every point within their
    bounds; those without one (or a bound too far) each with its own k nearest points of the item, found ring of
    cells after ring of cells: the whole cloud's results either way, in dense places and alone far away."""
    from stages.neighbourhoods import repair
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", 40)
    xyz, expected_sum, expected_kth = clusters
    chosen = np.array([0, 5, 950, 1300, 1305, 1311])
    given = {"none": np.full(6, np.inf), "loose": expected_kth[chosen] * 1.5,
             "some": np.where(np.arange(6) % 2 == 0, expected_kth[chosen] * 3, np.inf)}[bounds]
    with tiled(xyz) as (tiles, centre):
        records = np.concatenate([tiles.core(t) for t in range(len(tiles.tiles))])
        records = records[np.argsort(records["index"])][chosen]
        sums, kth = repair(tiles, centre, brute_force(7), records, given, 7, 1000.0)
    assert np.allclose(kth, expected_kth[chosen], rtol=1e-12) and np.allclose(sums, expected_sum[chosen], rtol=1e-12)
