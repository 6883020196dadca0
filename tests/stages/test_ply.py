import hashlib
from pathlib import Path

import numpy as np
import open3d
import pytest

from pipeline.errors import SourceError
from stages.ply import parse_header, read_ply
from tests.conftest import run
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
    joined = np.concatenate(chunks)
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
    assert str(error.value) == f"{path}: PLY vertex 2: expected 2 values"


def test_short_binary_file_is_an_error(tmp_path):
    records = np.zeros(10, [("x", "f8"), ("y", "f8"), ("z", "f8")])
    write_binary_ply(tmp_path / "c.ply", records, "<")
    data = (tmp_path / "c.ply").read_bytes()
    (tmp_path / "c.ply").write_bytes(data[:-30])
    with pytest.raises(SourceError, match=r"c.ply: PLY header promises 10 vertices but the file holds 8$"):
        with read_ply(tmp_path / "c.ply", 100) as stream:
            list(stream.chunks)


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
