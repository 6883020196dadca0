import hashlib
from pathlib import Path

import numpy as np
import open3d
import pytest

from pipeline.errors import SourceError
from stages.ply import parse_header, read_ply
from tests.conftest import as_array, ply_run, run
from tests.plyfile_plain import read_plain_ply


def write_binary_ply(path, records, order, extra_header=""):
    names = {"f8": "double", "f4": "float", "u1": "uchar", "i4": "int", "u2": "ushort"}
    header = f"ply\nformat binary_{'little' if order == '<' else 'big'}_endian 1.0\n{extra_header}" \
             f"element vertex {len(records)}\n"
    header += "".join(f"property {names[records.dtype[n].str[1:]]} {n}\n" for n in records.dtype.names)
    header += "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
    path.write_bytes(header.encode() + records.astype(records.dtype.newbyteorder(order)).tobytes())


@pytest.mark.parametrize("order", ["<", ">"])
def test_binary_both_endiannesses_stream_in_chunks(tmp_path, order):
    records = np.zeros(2500, [("x", "f8"), ("y", "f8"), ("z", "f4"), ("red", "u1"), ("scalar_class", "i4")])
    records["x"] = np.arange(2500) * 0.5 + 4_000_000
    records["y"] = -np.arange(2500)
    records["z"] = 0.25
    records["red"] = np.arange(2500) % 256
    records["scalar_class"] = np.arange(2500) - 100
    write_binary_ply(tmp_path / "c.ply", records, order)
    with read_ply(tmp_path / "c.ply", chunk_size=1000) as stream:
        chunks = list(stream.chunks)
    assert [len(c) for c in chunks] == [1000, 1000, 500]
    joined = as_array(chunks)
    assert joined.dtype.names == ("x", "y", "z", "red", "scalar_class")
    assert joined.dtype["z"] == np.float64
    for name in records.dtype.names:
        assert np.array_equal(joined[name], records[name]), name


def test_header_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "bad.ply"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty quad x\nend_header\n1\n")
    with pytest.raises(SourceError) as error:
        parse_header(path)
    assert str(error.value) == f"{path}: PLY header line 4: unsupported property 'property quad x'"
    path.write_text("ply\nformat ascii 1.0\nelement vertex 2\nproperty float x\nproperty float y\nend_header\n1 2\n3\n")
    with pytest.raises(SourceError) as error, read_ply(path, 10) as stream:
        list(stream.chunks)
    assert str(error.value) == f"{path}: line 8: expected 2 values, got 1"


def test_short_binary_file_is_an_error(tmp_path):
    records = np.zeros(10, [("x", "f8"), ("y", "f8"), ("z", "f8")])
    write_binary_ply(tmp_path / "c.ply", records, "<")
    data = (tmp_path / "c.ply").read_bytes()
    (tmp_path / "c.ply").write_bytes(data[:-30])
    with pytest.raises(SourceError) as error:
        with read_ply(tmp_path / "c.ply", 100) as stream:
            list(stream.chunks)
    assert str(error.value) == (f"{tmp_path / 'c.ply'}: PLY header promises 10 vertices but the file holds 8 "
                                "(`truncated: read` reads what is there)")


@pytest.mark.parametrize("ascii", [False, True])
def test_sink_writes_every_attribute_and_the_final_count(tmp_path, registry, conformance, ascii):
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'las/extrabytes.las'}"]
          - type: sink.ply
            path: out/{{name}}.ply
            ascii: {str(ascii).lower()}
    """)
    import laspy
    original = laspy.read(conformance / "las/extrabytes.las")
    plain = read_plain_ply(tmp_path / "out/extrabytes.ply")
    assert len(plain) == 1065
    assert plain.dtype.names[:4] == ("x", "y", "z", "intensity")
    assert "Colors_2" in plain.dtype.names and plain.dtype["Time"] == np.float64  # PLY has no 64-bit integers
    assert np.array_equal(plain["Colors_1"], original.Colors[:, 1])
    assert np.array_equal(plain["x"], original.x)
    cloud = open3d.io.read_point_cloud(str(tmp_path / "out/extrabytes.ply"))
    assert np.array_equal(np.asarray(cloud.points)[:, 2], original.z)
    header = (tmp_path / "out/extrabytes.ply").read_bytes().split(b"end_header\n")[0].decode()
    assert "element vertex 1065\n" in header


@pytest.mark.parametrize("source, hashed_while_writing", [("las/1.2-with-color.las", True), ("xyz/data.xyz", False)])
def test_report_checksum_is_the_file_s_whether_hashed_while_writing_or_read_back(
        tmp_path, registry, conformance, source, hashed_while_writing):
    # LAS says its point count up front, so the header is final from the start and the file is hashed as it
    # is written; a text file does not, so the header is rewritten at the end and the file is read back
    (result,) = run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / source}"]
          - type: sink.ply
            path: out/{{name}}.ply
    """)
    (output,) = result.outputs
    written = Path(output["path"]).read_bytes()
    assert output["sha256"] == hashlib.sha256(written).hexdigest() and output["size"] == len(written)
    assert bool(result.checksums) is hashed_while_writing


def test_without_a_report_nothing_is_hashed(tmp_path, registry, conformance):
    (result,) = run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{conformance / 'las/1.2-with-color.las'}"]
          - type: sink.ply
            path: out/{{name}}.ply
    """, checksums=False)
    assert result.checksums == {}
    assert result.outputs == [{"sink": "stages[1] (sink.ply)", "path": str(tmp_path / "out/1.2-with-color.ply"),
                               "size": (tmp_path / "out/1.2-with-color.ply").stat().st_size}]


def ascii_ply(path, properties, rows, count=None, before=""):
    """An ascii PLY file: `properties` as (type, name), `rows` as lines of text (without newlines)."""
    header = "ply\nformat ascii 1.0\ncomment made by hand\n" + before
    header += f"element vertex {len(rows) if count is None else count}\n"
    header += "".join(f"property {kind} {name}\n" for kind, name in properties)
    path.write_text(header + "end_header\n" + "".join(f"{row}\n" for row in rows))
    return path


def read_all(path, chunk_size=1000, truncated="error"):
    with read_ply(path, chunk_size, truncated) as stream:
        return list(stream.chunks)


XYZ_FLOAT = [("float", "x"), ("float", "y"), ("float", "z")]


@pytest.mark.parametrize("kind, value, message", [
    ("uchar", "999", "red 999 does not fit its PLY type uchar"),
    ("uchar", "-1", "red -1 does not fit its PLY type uchar"),
    ("uchar", "2.5", "red 2.5 does not fit its PLY type uchar"),
    ("short", "40000", "red 40000 does not fit its PLY type short"),
    ("uint", "nan", "red nan does not fit its PLY type uint"),
    ("float", "1e39", "red 1e39 does not fit its PLY type float"),
])
def test_ascii_values_outside_their_type_are_refused_naming_the_line(tmp_path, kind, value, message):
    # they used to wrap: 999 as uchar became 231
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT + [(kind, "red")], ["1 2 3 7", "4 5 6 8", f"7 8 9 {value}"])
    with pytest.raises(SourceError) as error:
        read_all(path, chunk_size=2)
    assert str(error.value) == f"{path}: line 12: {message}"


def test_ascii_values_at_the_edges_of_their_types_are_kept(tmp_path):
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT + [("uchar", "red"), ("char", "c"), ("uint", "u"), ("float", "f")],
                     ["1 2 3 255 -128 4294967295 nan", "4 5 6 0 127 0 -inf"])
    (chunk,) = read_all(path)
    assert chunk["red"].tolist() == [255, 0] and chunk["c"].tolist() == [-128, 127]
    assert chunk["u"].tolist() == [4294967295, 0]
    assert np.isnan(chunk["f"][0]) and chunk["f"][1] == -np.inf  # not a coordinate: kept as it is


@pytest.mark.parametrize("row, message", [
    ("nan 8 9", "x nan is not a finite number"),
    ("7 -inf 9", "y -inf is not a finite number"),
    ("7 8 1e999", "z 1e999 is not a finite number"),
])
def test_ascii_coordinates_that_are_not_finite_are_refused_naming_the_line(tmp_path, row, message):
    path = ascii_ply(tmp_path / "c.ply", [("double", "x"), ("double", "y"), ("double", "z")], ["1 2 3", row])
    with pytest.raises(SourceError) as error:
        read_all(path)
    assert str(error.value) == f"{path}: line 10: {message}"


def test_binary_coordinates_that_are_not_finite_are_refused_naming_the_vertex(tmp_path):
    records = np.zeros(2500, [("x", "f8"), ("y", "f4"), ("z", "f8"), ("intensity", "f4")])
    records["intensity"][5] = np.nan  # not a coordinate: kept
    records["y"][2100] = np.inf
    write_binary_ply(tmp_path / "c.ply", records, "<")
    with pytest.raises(SourceError) as error:
        read_all(tmp_path / "c.ply", chunk_size=1000)
    assert str(error.value) == f"{tmp_path / 'c.ply'}: vertex 2101: y inf is not a finite number"
    records["y"][2100] = 0
    write_binary_ply(tmp_path / "c.ply", records, "<")
    assert np.isnan(as_array(read_all(tmp_path / "c.ply"))["intensity"][5])


def test_nan_coordinates_stop_the_cli_with_one_line(tmp_path):
    from tests.conftest import cli, write_config
    ascii_ply(tmp_path / "c.ply", XYZ_FLOAT, ["1 2 3", "nan 5 6"])
    config = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [c.ply]
          - type: sink.las
            path: out/{name}.las
    """)
    done = cli("run", config, "-q")
    assert (done.returncode, done.stderr) == (1, f"error: {tmp_path / 'c.ply'}: line 10: x nan is not a finite number\n")
    assert not list(tmp_path.glob("out/*"))  # the sink's folder may be made; nothing is left in it


def test_an_offset_comment_that_is_not_finite_is_refused(tmp_path):
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT, ["1 2 3"], before="comment offset 500000 nan 0\n")
    with pytest.raises(SourceError) as error:
        read_all(path)
    assert str(error.value) == f"{path}: PLY header comment 'offset 500000 nan 0' holds a value that is not finite"


def test_a_short_ascii_file_is_an_error_or_read_with_truncated_read(tmp_path, caplog):
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT, ["1 2 3", "4 5 6", "7 8 9"], count=5)
    path.write_bytes(path.read_bytes()[:-2])  # the last line cut inside its last number: it is not read
    with pytest.raises(SourceError) as error:
        read_all(path, chunk_size=2)
    assert str(error.value) == (f"{path}: PLY header promises 5 vertices but the file holds 2 (`truncated: read` "
                                "reads what is there)")
    with caplog.at_level("WARNING"):
        chunks = read_all(path, chunk_size=2, truncated="read")
    assert as_array(chunks)["x"].tolist() == [1, 4]
    assert caplog.messages == [f"{path}: PLY header promises 5 vertices but the file holds 2; reading 2"]


def test_a_short_binary_file_is_read_with_truncated_read(tmp_path, caplog):
    records = np.zeros(10, [("x", "f8"), ("y", "f8"), ("z", "f8")])
    records["x"] = np.arange(10)
    write_binary_ply(tmp_path / "c.ply", records, "<")
    data = (tmp_path / "c.ply").read_bytes()
    (tmp_path / "c.ply").write_bytes(data[:-30])
    with caplog.at_level("WARNING"):
        with read_ply(tmp_path / "c.ply", 3, "read") as stream:
            assert stream.info.point_count == 8
            chunks = list(stream.chunks)
    assert as_array(chunks)["x"].tolist() == list(range(8))
    assert caplog.messages == [f"{tmp_path / 'c.ply'}: PLY header promises 10 vertices but the file holds 8; reading 8"]


def test_a_huge_element_count_before_the_vertices_ends_at_the_end_of_the_file(tmp_path):
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT, ["1 2 3"], before="element face 1000000000000\n"
                     "property list uchar int vertex_indices\n")
    with pytest.raises(SourceError) as error:
        read_all(path)
    assert str(error.value) == (f"{path}: PLY header promises 1 vertices but the file holds 0 (`truncated: read` "
                                "reads what is there)")
    records = np.zeros(3, [("x", "f8"), ("y", "f8"), ("z", "f8")])
    write_binary_ply(tmp_path / "b.ply", records, "<", extra_header="element extra 10000000000000000000000\n"
                     "property double v\n")
    with pytest.raises(SourceError) as error:
        read_all(tmp_path / "b.ply")
    assert str(error.value) == (f"{tmp_path / 'b.ply'}: PLY header promises 3 vertices but the file holds 0 "
                                "(`truncated: read` reads what is there)")


def test_a_property_name_that_is_not_ascii_is_refused(tmp_path):
    # found by tests/test_fuzz.py: the name became 'j\ufffd' and sink.ply could not write it back
    path = tmp_path / "c.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                     b"property int j\xff\nend_header\n1 2 3\n")
    with pytest.raises(SourceError) as error:
        parse_header(path)
    assert str(error.value) == f"{path}: PLY header line 6: property name 'j\\ufffd' is not printable ASCII"


def test_end_header_must_be_a_line_of_its_own(tmp_path):
    path = tmp_path / "c.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\ncomment see end_header below\nelement vertex 1\nproperty float x\n"
                     b"property float y\nproperty int jend_header\n1 2 3\n")
    with pytest.raises(SourceError) as error:
        parse_header(path)
    assert str(error.value) == f"{path}: PLY header has no end_header line in its first 1048576 bytes"


def test_a_property_named_twice_is_refused(tmp_path):
    # found by tests/test_fuzz.py: numpy refused the layout (an internal error)
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT + [("float", "y")], ["1 2 3 4"])
    with pytest.raises(SourceError) as error:
        parse_header(path)
    assert str(error.value) == f"{path}: PLY header line 8: property 'y' appears twice in element 'vertex'"


def test_signalling_nans_in_binary_data_give_no_numpy_warning(tmp_path):
    # found by tests/test_fuzz.py: converting a float32 signalling NaN printed "invalid value encountered in cast"
    import warnings
    records = np.zeros(3, [("x", "f4"), ("y", "f4"), ("z", "f4"), ("scalar", "f4")])
    records["scalar"].view("u4")[1] = 0x7FA00000  # a signalling NaN: kept, it is not a coordinate
    write_binary_ply(tmp_path / "c.ply", records, "<")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(as_array(read_all(tmp_path / "c.ply"))["scalar"][1])
        records["z"].view("u4")[2] = 0x7FA00000
        write_binary_ply(tmp_path / "c.ply", records, "<")
        with pytest.raises(SourceError) as error:
            read_all(tmp_path / "c.ply")
    assert str(error.value) == f"{tmp_path / 'c.ply'}: vertex 3: z nan is not a finite number"


def test_ascii_lines_of_the_wrong_width_are_refused_even_when_the_words_add_up(tmp_path):
    # a short line and a long one hold as many words as two right ones: they were read shifted, or failed
    # with an internal IndexError when a shifted value was not finite
    path = ascii_ply(tmp_path / "c.ply", XYZ_FLOAT, ["1 2 3", "4 5", "6 7 8 9"])
    with pytest.raises(SourceError) as error:
        read_all(path)
    assert str(error.value) == f"{path}: line 10: expected 3 values, got 2"


def test_normals_are_written_as_nx_ny_nz_which_open3d_reads_as_normals(tmp_path, registry):
    """normal_x, normal_y, normal_z (transform.normals) become nx, ny, nz; points that have nx, ny, nz already
    keep them, and their normal_x, normal_y, normal_z keep their names."""
    rng = np.random.default_rng(5)
    normals = rng.normal(size=(50, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    records = np.zeros(50, [("x", "f8"), ("y", "f8"), ("z", "f8"), ("normal_x", "f4"), ("normal_y", "f4"),
                            ("normal_z", "f4"), ("curvature", "f4")])
    records["x"], records["y"], records["z"] = rng.uniform(0, 10, (3, 50))
    records["normal_x"], records["normal_y"], records["normal_z"] = normals.T
    write_binary_ply(tmp_path / "in.ply", records, "<")
    path = ply_run(tmp_path, registry, "in.ply")
    assert "property float nx\nproperty float ny\nproperty float nz\nproperty float curvature\n" in \
        path.read_bytes().split(b"end_header")[0].decode()
    cloud = open3d.io.read_point_cloud(str(path))
    assert cloud.has_normals()
    assert np.array_equal(np.asarray(cloud.normals), normals.astype(np.float32).astype(np.float64))
    both = np.zeros(5, [("x", "f8"), ("y", "f8"), ("z", "f8"), ("nx", "f4"), ("ny", "f4"), ("nz", "f4"),
                        ("normal_x", "f4"), ("normal_y", "f4"), ("normal_z", "f4")])
    write_binary_ply(tmp_path / "both.ply", both, "<")
    names = [line.split()[-1] for line in ply_run(tmp_path, registry, "both.ply").read_bytes()
             .split(b"end_header")[0].decode().splitlines() if line.startswith("property")]
    assert names == ["x", "y", "z", "nx", "ny", "nz", "normal_x", "normal_y", "normal_z"]

