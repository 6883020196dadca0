import struct

import laspy
import numpy as np
import pytest

from pipeline.errors import SinkError, SourceError
from stages import las
from stages.las import writer
from stages.las import check_header, choose_offset, fit_values, read_las
from tests.conftest import as_array, make_las, run


def test_reader_streams_bounded_chunks_with_exact_values(conformance):
    original = laspy.read(conformance / "las/4_6_crop.las")
    with read_las(conformance / "las/4_6_crop.las", chunk_size=5000) as stream:
        chunks = list(stream.chunks)
        assert stream.info.point_count == 23875
        assert stream.info.source_format == "las"
    assert [len(c) for c in chunks] == [5000] * 4 + [3875]
    joined = as_array(chunks)
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
    with pytest.raises(SourceError) as error:
        with read_las(tmp_path / "cut.laz", 100000) as stream:
            list(stream.chunks)
    assert str(error.value) == (f"{tmp_path / 'cut.laz'}: header claims 1065 points but the file is cut short: it "
                                "ends at byte 9108, before its chunk table at byte 18203")


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
    monkeypatch.setattr(writer, "LAZ_BATCH", 3000)  # autzen_trim has 110,000 points: many batches, and a short last one
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
    monkeypatch.setattr(writer, "LAZ_BATCH", 3000)
    writers = []

    def failing(point_writer, points, done):
        writers.append(point_writer)
        done.set_exception(OSError(28, "No space left on device"))

    monkeypatch.setattr(writer, "compress_into", failing)
    with pytest.raises(SinkError, match=r"^stages\[1\] \(sink.las\): autzen_trim: cannot write "
                                         r"/\S+/out/autzen_trim\.laz: No space left on device$"):
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


def patched_las(tmp_path, fields, name="x.las", points=10):
    """A small LAS 1.2 file with header fields overwritten: {offset: (struct format, value)}."""
    path = make_las(tmp_path / name, [[i, i * 2, i * 3] for i in range(points)])
    data = bytearray(path.read_bytes())
    for offset, (layout, value) in fields.items():
        struct.pack_into(layout, data, offset, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("offset, value, message", [
    (131, 0.0, "x scale factor is 0; it must be a finite number other than 0"),
    (139, float("nan"), "y scale factor is nan; it must be a finite number other than 0"),
    (147, float("inf"), "z scale factor is inf; it must be a finite number other than 0"),
    (155, float("nan"), "x offset is nan; it must be a finite number"),
    (171, float("-inf"), "z offset is -inf; it must be a finite number"),
    (131, 1e308, "x scale factor 1e+308 and offset 0 give coordinates that are not finite numbers"),
])
def test_scales_and_offsets_that_make_no_coordinates_are_refused_up_front(tmp_path, offset, value, message):
    path = patched_las(tmp_path, {offset: ("<d", value)})
    with pytest.raises(SourceError) as error:
        check_header(path)
    assert str(error.value) == f"{path}: corrupt LAS header: {message}"


def test_a_nan_scale_stops_the_cli_with_one_line_and_nothing_written(tmp_path):
    from tests.conftest import cli, write_config
    patched_las(tmp_path, {131: ("<d", float("nan"))}, "scan.las")
    config = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [scan.las]
          - type: sink.ply
            path: out/{name}.ply
    """)
    done = cli("run", config, "-q")
    assert (done.returncode, done.stderr) == (1, f"error: {tmp_path / 'scan.las'}: corrupt LAS header: x scale factor "
                                                 "is nan; it must be a finite number other than 0\n")
    assert not (tmp_path / "out").exists()


def test_an_unknown_point_format_is_named(tmp_path):
    path = patched_las(tmp_path, {104: ("<B", 63)})
    with pytest.raises(SourceError) as error:
        check_header(path)
    assert str(error.value) == f"{path}: corrupt LAS header: unknown point format 63 (LAS has formats 0 to 10)"


def test_point_records_too_short_for_their_format_are_named(tmp_path):
    path = patched_las(tmp_path, {105: ("<H", 20)})
    with pytest.raises(SourceError) as error:
        check_header(path)
    assert str(error.value) == (f"{path}: corrupt LAS header: point records of 20 bytes are too short for point "
                                "format 3 (34 bytes)")


def test_a_header_size_too_small_for_the_version_is_named(tmp_path):
    path = make_las(tmp_path / "x.las", [[1, 2, 3]], version="1.4", point_format=6)
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 94, 300)
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError) as error:
        check_header(path)
    assert str(error.value) == f"{path}: corrupt LAS header: header size 300 is too small for LAS 1.4 (375 bytes)"


def truncated_las(tmp_path, name="x.las"):
    """A LAS file of 1000 points cut after 600."""
    path = make_las(tmp_path / name, [[i, i, i] for i in range(1000)], point_format=0)
    data = path.read_bytes()
    offset, = struct.unpack_from("<I", data, 96)
    path.write_bytes(data[:offset + 600 * 20 + 7])  # and 7 bytes of the 601st point
    return path


def test_a_truncated_las_is_an_error_naming_both_counts(tmp_path, registry):
    path = truncated_las(tmp_path)
    message = f"{path}: header claims 1000 points but the file holds 600 (`truncated: read` reads what is there)"
    with pytest.raises(SourceError) as error:
        check_header(path)
    assert str(error.value) == message
    with pytest.raises(SourceError) as error:
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [x.las]
              - type: sink.las
                path: out/{name}.las
        """)
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_truncated_read_reads_what_a_truncated_las_holds_with_a_warning(tmp_path, registry, caplog):
    path = truncated_las(tmp_path)
    with caplog.at_level("WARNING"):
        results = run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [x.las]
                truncated: read
              - type: sink.las
                path: out/{name}.las
              - type: sink.ply
                path: out/{name}.ply
        """)
    assert results[0].points_out == 600
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: header claims 1000 points but the file holds 600; reading 600"]
    written = laspy.read(tmp_path / "out/x.las")
    assert written.header.point_count == 600 and np.asarray(written.x).tolist() == list(range(600))


def test_the_truncated_option_takes_error_or_read(tmp_path, registry):
    from pipeline import config
    from pipeline.errors import ConfigError
    from tests.conftest import write_config
    with pytest.raises(ConfigError) as error:
        config.load(config_path := write_config(tmp_path, """
            version: 1
            stages:
              - type: source.files
                paths: [x.las]
                truncated: maybe
              - type: sink.las
                path: out/{name}.las
        """), registry)
    assert str(error.value) == (f"{config_path}:5: stages[0] (source.files) > truncated: expected one of error, "
                                "read, got 'maybe'")


def laz_with(tmp_path, conformance, table_field=None, chunk_size=None):
    """simple.laz with its chunk table's count, or its laszip VLR's chunk size, overwritten."""
    data = bytearray((conformance / "laz/simple.laz").read_bytes())
    offset, = struct.unpack_from("<I", data, 96)
    if table_field is not None:
        table, = struct.unpack_from("<q", data, offset)
        struct.pack_into("<I", data, table + 4, table_field)
    if chunk_size is not None:
        vlr = data.index(b"laszip encoded")
        struct.pack_into("<I", data, vlr - 2 + 54 + 12, chunk_size)
    (tmp_path / "x.laz").write_bytes(bytes(data))
    return tmp_path / "x.laz"


@pytest.mark.parametrize("change, message", [
    ({"table_field": 3_000_000_000}, "corrupt LAZ file: its chunk table lists 3000000000 chunks in 17862 bytes"),
    ({"chunk_size": 4_000_000_000}, "corrupt LAZ file: the laszip VLR gives chunks of 4000000000 points"),
    ({"table_field": 2}, "corrupt LAZ file: cannot read its chunk table: IoError: failed to fill whole buffer"),
])
def test_a_laz_whose_chunk_table_or_size_would_make_lazrs_abort_is_one_line(tmp_path, conformance, change, message):
    # lazrs allocates what these fields say (tens of gigabytes) and aborts the process: run it in a child
    from tests.conftest import cli, write_config
    path = laz_with(tmp_path, conformance, **change)
    config = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [x.laz]
          - type: sink.las
            path: out/{name}.las
    """)
    done = cli("run", config, "-q")
    assert (done.returncode, done.stderr) == (1, f"error: {path}: {message}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("offset, value, message", [
    (155, 1e308, "x scale factor 0.001 is finer than 64-bit floats can hold at offset 1e+308 (they are 1.99584e+292 "
                 "apart there)"),
    (147, 5e-324, "z scale factor 4.94066e-324 is finer than 64-bit floats can hold at offset 9 (they are "
                  "1.77636e-15 apart there)"),
])
def test_a_scale_finer_than_floats_hold_at_the_offset_is_refused(tmp_path, offset, value, message):
    # every point would silently get the same coordinate (found by tests/test_fuzz.py)
    path = patched_las(tmp_path, {offset: ("<d", value)}, points=10)
    data = bytearray(path.read_bytes())
    struct.pack_into("<d", data, 171, 9.0)  # z offset
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError) as error:
        check_header(path)
    assert str(error.value) == f"{path}: corrupt LAS header: {message}"


@pytest.mark.parametrize("offset, value", [(219, 1e308), (179, float("nan")), (187, -1e300)])
def test_header_bounds_its_points_cannot_have_are_left_out_with_a_warning(tmp_path, caplog, offset, value):
    # sinks choose their offsets from these bounds (found by tests/test_fuzz.py: a min z of 1e308)
    path = patched_las(tmp_path, {offset: ("<d", value)})
    with caplog.at_level("WARNING"):
        with read_las(path, 100) as stream:
            assert stream.info.bounds is None
            assert len(as_array(stream.chunks)) == 10
    assert caplog.messages == [f"{path}: header bounds are not within what its scale and offset can store; they are "
                               "left out"]


def las_with_extra_bytes(tmp_path, data_type=None, name=None):
    """A LAS 1.4 file with an extra dimension `temp` (uint16), its description then changed in the VLR."""
    header = laspy.LasHeader(version="1.4", point_format=6)
    header.add_extra_dims([laspy.ExtraBytesParams(name="temp", type="u2")])
    data = laspy.LasData(header)
    data.x, data.y, data.z = [1.0, 2.0], [3.0, 4.0], [5.0, 6.0]
    data.temp = np.array([7, 8], np.uint16)
    data.write(str(tmp_path / "x.las"))
    raw = bytearray((tmp_path / "x.las").read_bytes())
    at = raw.index(b"temp\0") - 4  # the start of its extra-bytes description
    if data_type is not None:
        raw[at + 2], raw[at + 3] = data_type, 0  # type 0 takes its size from the options byte: 0 bytes
    if name is not None:
        raw[at + 4:at + 36] = name.ljust(32, b"\0")
    (tmp_path / "x.las").write_bytes(bytes(raw))
    return tmp_path / "x.las"


@pytest.mark.parametrize("change, message", [
    ({"data_type": 0}, "extra bytes dimension 'temp' has no bytes"),
    ({"name": b"x"}, "extra bytes dimension 'x' has the name of another dimension"),
    ({"name": b"t\xc3\xa9mp"}, "extra bytes dimension name 't\\xe9mp' is not printable ASCII"),
])
def test_extra_bytes_descriptions_laspy_cannot_lay_out_are_named(tmp_path, change, message):
    # found by tests/test_fuzz.py: a zeroed description made laspy divide by zero (an internal error)
    path = las_with_extra_bytes(tmp_path, **change)
    with pytest.raises(SourceError) as error:
        with read_las(path, 100) as stream:
            list(stream.chunks)
    assert str(error.value) == f"{path}: corrupt LAS header: {message}"


def test_a_sink_error_leaves_no_reading_thread_behind(tmp_path, registry):
    # found by tests/test_fuzz.py: the read-ahead thread and its open file lived on until garbage collection
    import gc
    import threading
    make_las(tmp_path / "a.las", [[i * 10.0, 0, 0] for i in range(100_000)])
    gc.disable()
    try:
        with pytest.raises(SinkError, match="do not fit LAS 32-bit integers"):
            run(tmp_path, registry, """
                version: 1
                stages:
                  - type: source.files
                    paths: [a.las]
                  - type: sink.las
                    path: out/{name}.las
                    scale: 0.000001
                    offset: [0, 0, 0]
            """)
        assert [t.name for t in threading.enumerate() if t.name == "las-read-ahead"] == []
    finally:
        gc.enable()


def test_laz_is_decompressed_in_big_batches_and_cut_to_the_chunk_size(conformance):
    path = conformance / "laz/autzen_trim.laz"
    expected = laspy.read(path)
    with read_las(path, 7000) as stream:
        chunks = list(stream.chunks)
    assert max(map(len, chunks)) == 7000 and sum(map(len, chunks)) == len(expected.points)
    assert np.array_equal(np.concatenate([c["x"] for c in chunks]), expected.x)
    assert np.array_equal(np.concatenate([c["gps_time"] for c in chunks]), expected.gps_time)
