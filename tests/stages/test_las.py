import struct

import laspy
import numpy as np
import pytest

from pipeline.errors import SinkError, SourceError
from stages import las
from stages.las import check_header, choose_offset, fit_values, read_las
from tests.conftest import make_las, run


def test_reader_streams_bounded_chunks_with_exact_values(conformance):
    original = laspy.read(conformance / "las/4_6_crop.las")
    with read_las(conformance / "las/4_6_crop.las", chunk_size=5000) as stream:
        chunks = list(stream.chunks)
        assert stream.info.point_count == 23875
        assert stream.info.source_format == "las"
    assert [len(c) for c in chunks] == [5000] * 4 + [3875]
    joined = np.concatenate(chunks)
    assert joined.dtype["x"] == np.float64
    assert np.array_equal(joined["x"], original.x) and np.array_equal(joined["z"], original.z)
    for name in ("intensity", "return_number", "classification", "red", "gps_time", "point_source_id"):
        assert np.array_equal(joined[name], np.asarray(original[name])), name


def test_header_check_refuses_what_is_not_las(tmp_path):
    path = tmp_path / "x.las"
    path.write_bytes(b"LASF" + b"\0" * 10)
    with pytest.raises(SourceError, match=r"x.las: not a LAS file \(too short or no LASF signature\)$"):
        check_header(path)
    header = bytearray((tmp_path / "x.las").read_bytes().ljust(227, b"\0"))
    header[24:26] = bytes([2, 0])
    path.write_bytes(bytes(header))
    with pytest.raises(SourceError, match=r"x.las: unsupported LAS version 2.0$"):
        check_header(path)


def test_truncated_point_data_is_an_error_for_laz(tmp_path, conformance):
    data = (conformance / "laz/simple.laz").read_bytes()
    (tmp_path / "cut.laz").write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match=r"cut.laz: cannot read points: "):
        with read_las(tmp_path / "cut.laz", 100000) as stream:
            list(stream.chunks)


def test_survey_coordinates_keep_millimetres_through_transform_to_las_and_ply(tmp_path, registry):
    rng = np.random.default_rng(7)
    local = np.round(rng.uniform(-500, 500, (5000, 3)), 3)
    make_las(tmp_path / "local.las", local, scale=0.001)
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [local.las]
          - type: transform.matrix
            matrix: [[0, -1, 0, 350000.125], [1, 0, 0, 4000000.25], [0, 0, 1, 52.5], [0, 0, 0, 1]]
          - type: sink.las
            path: out/{name}.las
          - type: sink.ply
            path: out/{name}.ply
    """)
    expected = np.stack([350000.125 - local[:, 1], 4000000.25 + local[:, 0], 52.5 + local[:, 2]], axis=1)
    written = laspy.read(tmp_path / "out/local.las")
    got = np.stack([written.x, written.y, written.z], axis=1)
    assert np.abs(got - expected).max() < 1e-6  # exact millimetres: the values are on the grid
    assert written.header.offsets.tolist() == np.floor(expected.min(axis=0)).tolist()
    from tests.plyfile_plain import read_plain_ply
    ply = read_plain_ply(tmp_path / "out/local.ply")
    assert np.abs(np.stack([ply["x"], ply["y"], ply["z"]], axis=1) - expected).max() < 1e-7


def test_non_las_input_gets_the_smallest_point_format_and_extra_dims(tmp_path, registry):
    ply = tmp_path / "cloud.ply"
    ply.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty double x\nproperty double y\n"
                   "property double z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
                   "property float nx\nproperty int label\nend_header\n"
                   "1.0005 2 3 255 0 10 0.5 -7\n4 5 6 1 2 3 -0.25 70000\n")
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [cloud.ply]
          - type: sink.las
            path: out/{name}.las
    """)
    written = laspy.read(tmp_path / "out/cloud.las")
    assert str(written.header.version) == "1.4" and written.point_format.id == 2
    assert written.header.scales.tolist() == [0.001] * 3
    assert written.red.tolist() == [255, 1] and written.blue.tolist() == [10, 3]
    assert list(written.point_format.extra_dimension_names) == ["nx", "label"]
    assert written.nx.tolist() == [0.5, -0.25] and written.label.tolist() == [-7, 70000]
    assert np.abs(written.x - [1.0005, 4]).max() <= 0.0005


def test_value_that_does_not_fit_a_las_dimension_is_refused():
    with pytest.raises(SinkError) as error:
        fit_values(np.array([-1613.0, 602.0]), np.uint16, "intensity", "stages[1] (sink.las): autzen")
    assert str(error.value) == ("stages[1] (sink.las): autzen: field 'intensity' (float64) has values -1613.0..602.0 "
                                "that do not fit the LAS dimension intensity (uint16)")
    assert fit_values(np.array([3.0, 4.0]), np.uint16, "intensity", "").tolist() == [3, 4]


def test_offset_is_whole_units_below_the_data():
    assert choose_offset(4000123.456, 0.001) == 4000123.0
    assert choose_offset(-0.5, 0.01) == -1.0
    assert choose_offset(1234.0, 10.0) == 1230.0


def test_header_counts_returns_from_written_points(tmp_path, registry, conformance):
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'laz/autzen_trim.laz'}"]
          - type: transform.matrix
            matrix: [[1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
          - type: sink.las
            path: out/{{name}}.las
    """)
    original = laspy.read(conformance / "laz/autzen_trim.laz")
    written = laspy.read(tmp_path / "out/autzen_trim.las")
    expected = [int((original.return_number == r).sum()) for r in range(1, 6)]
    assert list(written.header.number_of_points_by_return)[:5] == expected
    assert written.header.mins.tolist() == [written.x.min(), written.y.min(), written.z.min()]
    assert np.abs(written.x - (original.x + 5)).max() <= 0.005  # the input's scale, 0.01, is kept


def test_patched_header_bytes_only_change_the_count(conformance):
    checked = check_header(conformance / "bad/bad_vlr_count.las")
    assert checked.patches == {100: struct.pack("<I", 2)}
    assert (checked.version, checked.point_format, checked.compressed, checked.point_count) == ("1.2", 3, False, 10)


def test_laz_is_compressed_in_batches_in_the_background_and_reads_back_exactly(tmp_path, registry, conformance,
                                                                                monkeypatch):
    monkeypatch.setattr(las, "LAZ_BATCH", 3000)  # autzen_trim has 110,000 points: many batches, and a short last one
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'laz/autzen_trim.laz'}"]
            chunk_size: 7000
          - type: sink.las
            path: out/{{name}}.laz
    """)
    original, written = laspy.read(conformance / "laz/autzen_trim.laz"), laspy.read(tmp_path / "out/autzen_trim.laz")
    assert written.points.array.tobytes() == original.points.array.tobytes()


def test_a_compression_error_stops_the_run_and_leaves_no_file(tmp_path, registry, conformance, monkeypatch):
    monkeypatch.setattr(las, "LAZ_BATCH", 3000)
    writers = []

    def failing(point_writer, points, done):
        writers.append(point_writer)
        done.set_exception(OSError(28, "No space left on device"))

    monkeypatch.setattr(las, "compress_into", failing)
    with pytest.raises(SinkError, match=r"^stages\[1\] \(sink.las\): autzen_trim: cannot write "
                                         r"\.autzen_trim\.laz\.\w+\.part: No space left on device$"):
        run(tmp_path, registry, f"""
            version: 1
            stages:
              - type: source.files
                paths: ["{conformance / 'laz/autzen_trim.laz'}"]
              - type: sink.las
                path: out/{{name}}.laz
        """)
    assert len(writers) == 1  # the error surfaced when the next batch was handed over
    assert list((tmp_path / "out").iterdir()) == []


def test_points_are_counted_and_read_errors_name_the_file():
    assert [len(p) for p in las.all_points([[1, 2], [3]], "a.las", 3)] == [2, 1]
    with pytest.raises(SourceError, match=r"^a.las: file ends 2 points early$"):
        list(las.all_points([[1, 2], [3]], "a.las", 5))

    def failing():
        yield [1]
        raise ValueError("bad chunk table")

    with pytest.raises(SourceError, match=r"^a.las: cannot read points: bad chunk table$"):
        list(las.all_points(failing(), "a.las", 5))

    def already_said():
        raise SourceError("a.las: already said")
        yield

    with pytest.raises(SourceError, match=r"^a.las: already said$"):  # not wrapped twice
        list(las.all_points(already_said(), "a.las", 1))
