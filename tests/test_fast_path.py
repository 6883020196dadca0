"""The raw-record fast path writes exactly what the plain chunk path writes."""
import laspy
import numpy as np
import pytest

from pipeline import runner as runner_module
from tests.conftest import CONFORMANCE, make_las, run

LAS_FILES = sorted(p.relative_to(CONFORMANCE).as_posix() for p in CONFORMANCE.glob("la[sz]/*.la[sz]")) + \
    ["bad/bad_vlr_count.las", "bad/garbage_nVariableLength.las"]
MOVE = "[[0.8660254037844387, -0.5, 0, 350000.125], [0.5, 0.8660254037844387, 0, 4000000.5], [0, 0, 1, 12], [0, 0, 0, 1]]"


EVERY_SINK = """
              - type: sink.las
                path: out/{name}.las
              - type: sink.las
                path: out/{name}.laz
              - type: sink.ply
                path: out/{name}.ply"""


def run_both(tmp_path, registry, source, chunk_size=1000, sinks=EVERY_SINK, checksums=True):
    outputs = {}
    for fast in (True, False):
        folder = tmp_path / ("fast" if fast else "plain")
        folder.mkdir()
        results = run(folder, registry, f"""
            version: 1
            stages:
              - type: source.files
                paths: ["{source}"]
                chunk_size: {chunk_size}
                truncated: read
              - type: transform.matrix
                matrix: {MOVE}{sinks}
        """, fast_path=fast, checksums=checksums)
        outputs[fast] = (folder / "out", results)
    return outputs


def assert_same(outputs, stem):
    (fast, fast_results), (plain, plain_results) = outputs[True], outputs[False]
    for suffix in (".las", ".laz"):
        a, b = laspy.read(fast / f"{stem}{suffix}"), laspy.read(plain / f"{stem}{suffix}")
        assert a.points.array.tobytes() == b.points.array.tobytes()
        assert a.header.mins.tolist() == b.header.mins.tolist() and a.header.maxs.tolist() == b.header.maxs.tolist()
        assert a.header.offsets.tolist() == b.header.offsets.tolist()
        assert list(a.header.number_of_points_by_return) == list(b.header.number_of_points_by_return)
        assert a.header.point_count == b.header.point_count
    assert (fast / f"{stem}.ply").read_bytes() == (plain / f"{stem}.ply").read_bytes()
    assert fast_results[0].bounds_out == plain_results[0].bounds_out
    assert fast_results[0].points_out == plain_results[0].points_out


@pytest.mark.parametrize("name", LAS_FILES)
def test_fast_path_equals_plain_path_on_the_corpus(tmp_path, registry, conformance, name):
    assert_same(run_both(tmp_path, registry, conformance / name), (conformance / name).stem)


def test_fast_path_equals_plain_path_on_random_survey_data(tmp_path, registry):
    rng = np.random.default_rng(11)
    xyz = np.stack([rng.uniform(0, 2000, 25_000), rng.uniform(0, 2000, 25_000), rng.uniform(0, 80, 25_000)], axis=1)
    make_las(tmp_path / "random.las", xyz, scale=0.001, point_format=7, version="1.4",
             intensity=rng.integers(0, 65535, 25_000).astype(np.uint16),
             return_number=rng.integers(1, 4, 25_000).astype(np.uint8),
             number_of_returns=np.full(25_000, 3, np.uint8),
             gps_time=rng.uniform(0, 1e6, 25_000), red=rng.integers(0, 65535, 25_000).astype(np.uint16))
    outputs = run_both(tmp_path, registry, tmp_path / "random.las", chunk_size=4096)
    assert_same(outputs, "random")


@pytest.mark.parametrize("name", ["las/1.2_3.las", "las/test1_4.las", "las/extrabytes.las"])
@pytest.mark.parametrize("options", ["", "offset: auto", "colors: keep", "colors: 16bit"])
@pytest.mark.parametrize("checksums", [True, False])
def test_fast_path_equals_plain_path_for_ply_options_and_as_first_sink(tmp_path, registry, conformance, name,
                                                                       options, checksums, monkeypatch):
    # the first sink gets the reader's own block, the others a copy; sink.ply copies the LAS fields in the
    # compute thread when it hashes, else in the writing thread
    taken = []
    fast_path = runner_module._process_raw
    monkeypatch.setattr(runner_module, "_process_raw", lambda *args: taken.append(fast_path(*args)) or taken[-1])
    sinks = f"""
              - type: sink.ply
                path: out/{{name}}.ply
                {options}
              - type: sink.las
                path: out/{{name}}.las"""
    outputs = run_both(tmp_path, registry, conformance / name, sinks=sinks, checksums=checksums)
    stem = (conformance / name).stem
    (fast, _), (plain, _) = outputs[True], outputs[False]
    assert (fast / f"{stem}.ply").read_bytes() == (plain / f"{stem}.ply").read_bytes()
    assert (fast / f"{stem}.las").read_bytes() == (plain / f"{stem}.las").read_bytes()
    assert taken == [True]  # only the fast run asks for the fast path, and it took it


def test_a_source_without_raw_records_takes_the_chunk_path(tmp_path, registry, conformance):
    [result] = run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'ply/simple_binary.ply'}"]
          - type: transform.matrix
            matrix: {MOVE}
          - type: sink.las
            path: out/{{name}}.las
    """)
    assert result.points_out == 3
    cos30 = 0.8660254037844387
    expected_x = [-cos30 + 350000.125, -0.5 + 350000.125, cos30 + 350000.125]  # (-1,0,0), (0,1,0), (1,0,0)
    assert np.abs(laspy.read(tmp_path / "out/simple_binary.las").x - expected_x).max() <= 0.0005
