"""transform.outliers: the points kept are exactly those open3d's remove_statistical_outlier and
remove_radius_outlier keep on the whole cloud, for any tiling; drop or classify; every attribute and VLR kept."""
import logging
import os

import laspy
import numpy as np
import open3d
import pytest

from pipeline.errors import ConfigError, StageError
from stages import neighbourhoods
from tests.conftest import make_las, survey_las, through, vlr_keys
from tests.stages.test_normals import surfaces

COUNT = 5000
X0, Y0 = 500_000, 4_000_000


@pytest.fixture
def survey(tmp_path):
    """Survey-like surfaces at UTM-sized coordinates (millimetres, as scanners store them) with noise points
    scattered above and below."""
    rng = np.random.default_rng(41)
    noise = rng.uniform([X0, Y0, 20], [X0 + 40, Y0 + 40, 45], (COUNT // 20, 3))
    xyz = np.concatenate([surfaces(COUNT - len(noise), rng), noise])[rng.permutation(COUNT)]
    survey_las(tmp_path / "in.las", xyz, rng, classes=5, synthetic=rng.integers(0, 2, COUNT),
               withheld=rng.integers(0, 2, COUNT))
    return tmp_path


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", 250)


def cleaned(folder, registry, options, chunk_size=65536, **run_options):
    return through(folder, registry, "transform.outliers", options, chunk_size, **run_options)


def open3d_kept(path, method, **options):
    """The indices open3d keeps on the whole cloud, given the world coordinates as laspy reads them."""
    data = laspy.read(path)
    cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(
        np.column_stack([np.asarray(data.x), np.asarray(data.y), np.asarray(data.z)])))
    if method == "statistical":
        _, kept = cloud.remove_statistical_outlier(options.get("mean_k", 8), options.get("multiplier", 2.0))
    else:
        _, kept = cloud.remove_radius_outlier(options.get("min_k", 2), options["radius"])
    return np.asarray(kept, dtype=np.int64)


CASES = [("statistical", {}), ("statistical", {"mean_k": 20, "multiplier": 1.0}),
         ("radius", {"radius": 1.0}), ("radius", {"radius": 1.2, "min_k": 4})]


@pytest.mark.parametrize("method, options", CASES)
@pytest.mark.parametrize("chunk_size", [333, 65536])
def test_the_points_kept_are_those_open3d_keeps_on_the_whole_cloud(survey, registry, small_tiles, method, options,
                                                                    chunk_size):
    results, path = cleaned(survey, registry, {"method": method, **options}, chunk_size)
    kept = open3d_kept(survey / "in.las", method, **options)
    assert COUNT * 0.5 < len(kept) < COUNT - 100
    original = laspy.read(survey / "in.las")
    assert laspy.read(path).points.array.tobytes() == original.points.array[kept].tobytes()
    step = results[0].applied[-1]
    assert step["points_in"] == COUNT and step["points_out"] == len(kept) == results[0].points_out
    expected = {"stage": "stages[1] (transform.outliers)", "method": method, "action": "drop",
                **({"mean_k": 8, "multiplier": 2.0} if method == "statistical" else {"min_k": 2}), **options}
    assert {key: step[key] for key in expected} == expected


@pytest.mark.parametrize("method, options", CASES[::2])
def test_the_tiling_changes_nothing(survey, registry, monkeypatch, method, options):
    outputs = []
    for tile_points, repair_share in [(100, 1), (700, 512), (1 << 20, 512)]:
        monkeypatch.setattr(neighbourhoods, "TILE_POINTS", tile_points)
        monkeypatch.setattr(neighbourhoods, "REPAIR_SHARE", repair_share)
        results, path = cleaned(survey, registry, {"method": method, **options}, chunk_size=999)
        outputs.append((path.read_bytes(), results[0].applied[-1]))
        path.unlink()
    assert outputs[0] == outputs[1] == outputs[2]


def test_classify_keeps_every_point_and_sets_the_outliers_class(survey, registry, small_tiles):
    results, path = cleaned(survey, registry, {"action": "classify", "class": 18})
    kept = open3d_kept(survey / "in.las", "statistical")
    original, written = laspy.read(survey / "in.las"), laspy.read(path)
    expected = np.asarray(original.classification).copy()
    outliers = np.setdiff1d(np.arange(COUNT), kept)
    expected[outliers] = 18
    assert np.array_equal(np.asarray(written.classification), expected)
    assert len(outliers) > 100
    records, written_records = original.points.array.copy(), written.points.array
    for flag in ("synthetic", "withheld"):  # the other bits of the byte that holds the class
        assert np.array_equal(np.asarray(written[flag]), np.asarray(original[flag]))
    assert np.asarray(original.synthetic).any()
    records["raw_classification"] = written_records["raw_classification"]
    assert written_records.tobytes() == records.tobytes()
    assert results[0].applied[-1]["class"] == 18 and results[0].points_out == COUNT


def test_a_class_beyond_the_item_s_las_point_format_is_refused(survey, registry):
    with pytest.raises(StageError) as error:
        cleaned(survey, registry, {"action": "classify", "class": 40})
    assert str(error.value) == ("stages[1] (transform.outliers): in: class 40 does not fit: LAS point format 3 holds "
                                "classes 0-31")


def test_classify_gives_an_item_without_classes_a_classification(tmp_path, registry, small_tiles):
    rng = np.random.default_rng(2)
    xyz = np.concatenate([surfaces(2000, rng, size=20.0), rng.uniform([X0, Y0, 40], [X0 + 20, Y0 + 20, 60], (40, 3))])
    records = np.zeros(len(xyz), [("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2")])
    records["x"], records["y"], records["z"] = xyz.T
    records["intensity"] = np.arange(len(xyz))
    header = ("ply\nformat binary_little_endian 1.0\nelement vertex %d\nproperty double x\nproperty double y\n"
              "property double z\nproperty ushort intensity\nend_header\n" % len(xyz))
    (tmp_path / "in.ply").write_bytes(header.encode() + records.tobytes())
    cleaned(tmp_path, registry, {"action": "classify"}, name="in.ply")
    written = laspy.read(tmp_path / "out" / "in.las")
    cloud = open3d.geometry.PointCloud(open3d.utility.Vector3dVector(xyz))
    kept = np.asarray(cloud.remove_statistical_outlier(8, 2.0)[1])
    expected = np.full(len(xyz), 7)
    expected[kept] = 0
    assert np.array_equal(np.asarray(written.classification), expected)
    assert np.array_equal(np.asarray(written.intensity), records["intensity"])


@pytest.mark.parametrize("name", ["las/4_6_crop.las", "laz/autzen_trim.laz"])
@pytest.mark.parametrize("method, options", [("statistical", {}), ("radius", {"radius": 3.0, "min_k": 3})])
def test_conformance_files(tmp_path, registry, conformance, monkeypatch, name, method, options):
    monkeypatch.setattr(neighbourhoods, "TILE_POINTS", 4000)
    source = tmp_path / os.path.basename(name)
    source.write_bytes((conformance / name).read_bytes())
    _, path = cleaned(tmp_path, registry, {"method": method, **options}, chunk_size=10000, name=source.name)
    kept = open3d_kept(source, method, **options)
    original, written = laspy.read(source), laspy.read(path)
    assert 0 < len(kept) < len(original.points)
    assert written.points.array.tobytes() == original.points.array[kept].tobytes()
    assert vlr_keys(written.header) == vlr_keys(original.header)
    assert written.point_format.id == original.point_format.id


def test_points_on_top_of_each_other_and_fewer_points_than_mean_k(tmp_path, registry):
    """A point whose neighbours all coincide with it has a mean distance of 0, and open3d removes it; with
    fewer points than mean_k every point's mean is over all of them."""
    xyz = np.array([[X0, Y0, 1.0]] * 3 + [[X0 + 1, Y0, 1.0], [X0, Y0 + 1.5, 1.0], [X0 + 9, Y0 + 9, 1.0]])
    make_las(tmp_path / "in.las", xyz, point_format=1, gps_time=np.arange(6.0))
    for options in ({"mean_k": 3, "multiplier": 1.0}, {"mean_k": 10, "multiplier": 0.5}):
        _, path = cleaned(tmp_path, registry, options)
        assert laspy.read(path).gps_time.tolist() == open3d_kept(tmp_path / "in.las", "statistical", **options).tolist()
        path.unlink()


def test_an_item_left_empty_gives_an_empty_file_and_says_so(survey, registry, caplog):
    with caplog.at_level(logging.WARNING):
        results, path = cleaned(survey, registry, {"method": "radius", "radius": 0.01, "min_k": 50})
    assert laspy.read(path).header.point_count == 0 == results[0].points_out
    lines = [r.getMessage() for r in caplog.records if "no point is left" in r.getMessage()]
    assert lines == [f"stages[1] (transform.outliers): in: no point is left ({COUNT} in)"]


@pytest.mark.parametrize("options, message", [
    ({"method": "median"}, "method: expected one of statistical, radius, got 'median'"),
    ({"method": "radius"}, "radius: `method: radius` needs `radius`"),
    ({"radius": 1.0}, "radius: `radius` is for `method: radius`"),
    ({"method": "radius", "radius": 1.0, "mean_k": 4}, "mean_k: `mean_k` is for `method: statistical`"),
    ({"min_k": 3}, "min_k: `min_k` is for `method: radius`"),
    ({"mean_k": 0}, "mean_k: expected an integer >= 1, got 0"),
    ({"multiplier": -1}, "multiplier: expected a number > 0, got -1"),
    ({"method": "radius", "radius": 0}, "radius: expected a number > 0, got 0"),
    ({"class": 7}, "class: `class` is used only with `action: classify`"),
    ({"action": "classify", "class": 300}, "class: expected an integer >= 0 and <= 255, got 300"),
    ({"action": "flag"}, "action: expected one of drop, classify, got 'flag'"),
])
def test_bad_options_are_one_line_errors(survey, registry, options, message):
    with pytest.raises(ConfigError) as error:
        cleaned(survey, registry, options)
    assert str(error.value).endswith(f"stages[1] (transform.outliers) > {message}")
    assert len(str(error.value).splitlines()) == 1
