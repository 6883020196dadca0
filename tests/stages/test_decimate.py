"""transform.decimate: PDAL's step/offset/limit, or a reproducible fraction; every kept point's record exact."""
import laspy
import numpy as np
import pytest

from pipeline.errors import ConfigError
from tests.conftest import make_las, run

COUNT = 1000


@pytest.fixture
def survey(tmp_path):
    rng = np.random.default_rng(11)
    xyz = rng.uniform([500_000, 4_000_000, 10], [500_100, 4_000_100, 40], (COUNT, 3))
    make_las(tmp_path / "in.las", xyz, point_format=3, gps_time=rng.uniform(0, 1e6, COUNT),
             intensity=rng.integers(0, 65535, COUNT), classification=rng.integers(0, 31, COUNT),
             red=rng.integers(0, 65535, COUNT), return_number=rng.integers(1, 5, COUNT))
    return tmp_path


def decimated(folder, registry, options, chunk_size=65536, sink="las"):
    lines = "".join(f"            {key}: {value}\n" for key, value in options.items())
    results = run(folder, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [in.las]
            chunk_size: {chunk_size}
          - type: transform.decimate
{lines}          - type: sink.{sink}
            path: out/{{name}}.{sink}
    """)
    return results, folder / f"out/in.{sink}"


@pytest.mark.parametrize("options, kept", [
    ({"step": 2}, slice(0, None, 2)),
    ({"step": 3, "offset": 5}, slice(5, None, 3)),
    ({"step": 7, "offset": 2, "limit": 500}, slice(2, 500, 7)),
    ({"offset": 990}, slice(990, None)),
    ({"limit": 1}, slice(0, 1)),
])
@pytest.mark.parametrize("chunk_size", [64, 65536])
def test_step_offset_limit_keep_what_pdal_keeps_with_every_record_exact(survey, registry, options, kept, chunk_size):
    results, path = decimated(survey, registry, options, chunk_size)
    original = laspy.read(survey / "in.las").points.array
    written = laspy.read(path)
    assert written.points.array.tobytes() == original[kept].tobytes()  # every field of every kept point
    assert written.header.point_count == results[0].points_out == len(original[kept])
    assert results[0].points_in == COUNT


def test_a_fraction_keeps_the_same_points_on_every_run_and_chunk_size(survey, registry, tmp_path):
    _, first = decimated(survey, registry, {"fraction": 0.25, "seed": 7}, chunk_size=100)
    kept = laspy.read(first).gps_time
    again = tmp_path / "again"
    again.mkdir()
    (again / "in.las").write_bytes((survey / "in.las").read_bytes())
    _, second = decimated(again, registry, {"fraction": 0.25, "seed": 7}, chunk_size=33)
    assert np.array_equal(laspy.read(second).gps_time, kept)
    assert 200 <= len(kept) <= 300
    original = laspy.read(survey / "in.las").gps_time
    assert np.isin(kept, original).all()  # real points, not made up
    (survey / "out/in.las").unlink()
    _, other_seed = decimated(survey, registry, {"fraction": 0.25, "seed": 8})
    assert not np.array_equal(laspy.read(other_seed).gps_time, kept)


def test_fraction_and_step_together_are_refused(survey, registry):
    with pytest.raises(ConfigError) as error:
        decimated(survey, registry, {"fraction": 0.5, "step": 2})
    assert str(error.value).endswith("stages[1] (transform.decimate) > fraction: give either `fraction` or step, "
                                     "offset and limit, not both")


def test_ply_output_of_a_decimated_las_keeps_every_attribute(survey, registry):
    _, path = decimated(survey, registry, {"step": 2}, chunk_size=100, sink="ply")
    from tests.plyfile_plain import read_plain_ply
    vertices = read_plain_ply(path)
    original = laspy.read(survey / "in.las")
    assert np.array_equal(vertices["gps_time"], original.gps_time[::2])
    assert np.array_equal(vertices["classification"], np.asarray(original.classification)[::2])
    assert np.array_equal(vertices["return_number"], np.asarray(original.return_number)[::2])
    assert np.array_equal(vertices["x"], np.asarray(original.x)[::2])


@pytest.mark.parametrize("sink", ["las", "ply"])
def test_empty_chunks_from_a_stage_are_written_as_nothing(survey, registry, sink):
    results, path = decimated(survey, registry, {"limit": 1}, chunk_size=64, sink=sink)  # then empty chunks
    assert results[0].points_out == 1
    if sink == "las":
        assert laspy.read(path).header.point_count == 1
    else:
        from tests.plyfile_plain import read_plain_ply
        assert len(read_plain_ply(path)["x"]) == 1
