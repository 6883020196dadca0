"""source.files: formats told by content, zips read transparently, paths and globs, template fields."""
import shutil
import tempfile
import zipfile

import laspy
import numpy as np
import pytest

from pipeline import config
from pipeline.errors import SourceError
from pipeline.runner import Runner
from stages.files import read_file
from tests.conftest import make_las, write_config
from tests.plyfile_plain import read_plain_ply
from tests.conftest import run

README = "Survey of the north site.\nScanned by the field team; see the report for details.\n"


def plan(tmp_path, registry, body):
    cfg = config.load(write_config(tmp_path, body), registry)
    return Runner(cfg, registry).plan()


def files_config(paths, sinks="  - type: sink.ply\n    path: out/{name}.ply\n", extra=""):
    listed = ", ".join(f'"{p}"' for p in paths)
    return f"version: 1\nstages:\n  - type: source.files\n    paths: [{listed}]\n{extra}{sinks}"


def test_format_comes_from_content_not_name(tmp_path, registry, conformance):
    shutil.copy(conformance / "las/simple.las", tmp_path / "las_inside.ply")
    shutil.copy(conformance / "ply/simple_text.ply", tmp_path / "ply_inside.las")
    results = run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [las_inside.ply, ply_inside.las]
          - type: sink.ply
            path: out/{name}.ply
    """)
    assert [r.item.metadata["format"] for r in results] == ["las", "ply"]
    original_las = laspy.read(conformance / "las/simple.las")
    from_las = read_plain_ply(tmp_path / "out/las_inside.ply")
    assert len(from_las) == 1065
    for axis in "xyz":
        assert np.array_equal(from_las[axis], np.asarray(original_las[axis]))
    assert np.array_equal(from_las["intensity"], original_las.intensity)
    original_ply = read_plain_ply(conformance / "ply/simple_text.ply")
    from_ply = read_plain_ply(tmp_path / "out/ply_inside.ply")
    assert len(from_ply) == len(original_ply)
    for field in original_ply.dtype.names:
        assert np.array_equal(from_ply[field], original_ply[field].astype(from_ply[field].dtype)), field


def test_unknown_binary_file_is_a_one_line_error_naming_it(tmp_path, registry):
    (tmp_path / "scan.las").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(SourceError) as error:
        plan(tmp_path, registry, files_config(["scan.las"]))
    assert str(error.value) == (f"{tmp_path / 'scan.las'}: unknown point-cloud format (starts with "
                                "b'\\x89PNG\\r\\n\\x1a\\n'); expected LAS, LAZ, PLY, PTS, XYZ, E57 or a zip holding "
                                "one of them")
    assert "\n" not in str(error.value)


def make_zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            if isinstance(content, bytes):
                archive.writestr(name, content)
            else:
                archive.write(content, name)
    return path


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder moved into tmp_path, so what the reader leaves there can be seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_zip_with_one_las_and_a_readme_is_read_transparently(tmp_path, registry, conformance, private_tmp):
    make_zip(tmp_path / "delivery.zip", {"scans/simple.las": conformance / "las/simple.las",
                                         "readme.txt": README.encode()})
    with read_file(str(tmp_path / "delivery.zip"), 400) as stream:
        unpacked = list(private_tmp.iterdir())
        assert len(unpacked) == 1 and unpacked[0].name.startswith("pipeline-zip-")
        assert [p.name for p in unpacked[0].iterdir()] == ["simple.las"]
        assert stream.info.source_format == "las"
        chunks = list(stream.chunks)
    assert [len(c) for c in chunks] == [400, 400, 265]
    assert list(private_tmp.iterdir()) == []

    results = run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [delivery.zip]
          - type: sink.las
            path: out/{name}.las
    """)
    assert results[0].item.name == "delivery" and results[0].item.metadata["format"] == "zip"
    original = laspy.read(conformance / "las/simple.las")
    written = laspy.read(tmp_path / "out/delivery.las")
    assert written.points.array.tobytes() == original.points.array.tobytes()
    assert list(private_tmp.iterdir()) == []


def test_zip_temporary_folder_is_removed_after_an_error(tmp_path, private_tmp):
    make_zip(tmp_path / "bad.zip", {"points.xyz": b"1 2 3\n4 5 6\n7 8 nine\n"})
    with pytest.raises(SourceError) as error:
        with read_file(str(tmp_path / "bad.zip"), 10) as stream:
            list(stream.chunks)
    assert str(error.value).endswith("points.xyz: line 3: 'nine' is not a number")
    assert list(private_tmp.iterdir()) == []


def test_zip_with_a_text_cloud_and_a_readme(tmp_path, registry, private_tmp):
    make_zip(tmp_path / "text.zip", {"readme.txt": README.encode(), "cloud/points.xyz": b"1 2 3\n4.5 5 6\n"})
    run(tmp_path, registry, files_config(["text.zip"]))
    assert read_plain_ply(tmp_path / "out/text.ply").tolist() == [(1.0, 2.0, 3.0), (4.5, 5.0, 6.0)]
    assert list(private_tmp.iterdir()) == []


def test_zip_with_two_clouds_is_an_error(tmp_path, registry, conformance):
    make_zip(tmp_path / "two.zip", {"a.las": conformance / "las/simple.las",
                                    "b.ply": conformance / "ply/simple_text.ply", "readme.txt": README.encode()})
    with pytest.raises(SourceError) as error:
        plan(tmp_path, registry, files_config(["two.zip"]))
    assert str(error.value) == f"{tmp_path / 'two.zip'}: expected a zip holding one point cloud, found 2 (a.las, b.ply)"


def test_zip_with_no_cloud_is_an_error(tmp_path, registry):
    make_zip(tmp_path / "none.zip", {"readme.txt": README.encode(), "notes.md": b"# notes\n"})
    with pytest.raises(SourceError) as error:
        plan(tmp_path, registry, files_config(["none.zip"]))
    assert str(error.value) == f"{tmp_path / 'none.zip'}: expected a zip holding one point cloud, found 0 (none)"


def test_missing_file_is_an_error(tmp_path, registry):
    with pytest.raises(SourceError) as error:
        plan(tmp_path, registry, files_config(["nothing.las"]))
    assert str(error.value) == f"{tmp_path / 'nothing.las'}: no such file"


def test_glob_without_match_is_an_error(tmp_path, registry):
    with pytest.raises(SourceError) as error:
        plan(tmp_path, registry, files_config(["scans/*.laz"]))
    assert str(error.value) == f"no file matches {tmp_path / 'scans/*.laz'}"


def test_glob_order_is_sorted_and_each_file_is_read_once(tmp_path, registry):
    for index, name in enumerate(["c", "a", "b"]):
        make_las(tmp_path / f"{name}.las", [[index, 0, 0], [index, 1, 1]])
    found = plan(tmp_path, registry, files_config(["b.las", "*.las", "b.las", "a.las"]))
    assert [item.name for item in found.items] == ["b", "a", "c"]
    assert [item.index for item in found.items] == [0, 1, 2]
    found = plan(tmp_path, registry, files_config(["*.las"]))
    assert [item.name for item in found.items] == ["a", "b", "c"]
    assert [item.point_count for item in found.items] == [2, 2, 2]
    results = run(tmp_path, registry, files_config(["*.las", "c.las"]))
    assert [r.item.name for r in results] == ["a", "b", "c"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.ply", "b.ply", "c.ply"]


def test_path_templates(tmp_path, registry):
    make_las(tmp_path / "north.las", [[1, 2, 3]])
    make_las(tmp_path / "south.las", [[4, 5, 6]])
    found = plan(tmp_path, registry, files_config(
        ["*.las"], sinks="  - type: sink.las\n    path: out/{stem}/{name}-{id}-{index}.las\n"))
    assert [item.template_values() for item in found.items] == [
        {"name": "north", "id": "north", "index": "0", "stem": "north"},
        {"name": "south", "id": "south", "index": "1", "stem": "south"}]
    assert [path for pairs in found.targets.values() for _, path in pairs] == [
        str(tmp_path / "out/north/north-north-0.las"), str(tmp_path / "out/south/south-south-1.las")]
    run(tmp_path, registry, files_config(["*.las"], sinks="  - type: sink.las\n"
                                                        "    path: out/{stem}/{name}-{id}-{index}.las\n"))
    assert np.asarray(laspy.read(tmp_path / "out/south/south-south-1.las").x).tolist() == [4.0]
    assert np.asarray(laspy.read(tmp_path / "out/north/north-north-0.las").z).tolist() == [3.0]


def test_stem_of_a_name_with_several_dots(tmp_path, registry, conformance):
    shutil.copy(conformance / "las/simple.las", tmp_path / "site.2024.v2.las")
    found = plan(tmp_path, registry, files_config(["site.2024.v2.las"]))
    assert found.items[0].template_values()["stem"] == "site.2024.v2"
    assert found.targets[0] == [("stages[1] (sink.ply)", str(tmp_path / "out/site.2024.v2.ply"))]


def declared_size(path, size):
    """Rewrites the uncompressed size a zip's only member declares, in its local and central headers."""
    import struct
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 22, size)
    struct.pack_into("<I", data, data.rfind(b"PK\x01\x02") + 24, size)
    path.write_bytes(bytes(data))
    with zipfile.ZipFile(path) as archive:
        return archive.infolist()[0].compress_size


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(tmp_path, registry, private_tmp):
    make_zip(tmp_path / "bomb.zip", {"points.xyz": b"1 2 3\n4 5 6\n" * 1000})
    compressed = declared_size(tmp_path / "bomb.zip", 1_500_000_000)
    with pytest.raises(SourceError) as error:
        plan(tmp_path, registry, files_config(["bomb.zip"]))
    assert str(error.value) == (f"{tmp_path / 'bomb.zip'}: member points.xyz would unpack to 1500000000 bytes from "
                                f"{compressed}, {1_500_000_000 // compressed} times its size: refused as a zip bomb "
                                "(the limit is 100 times, for members over 64 MB)")
    assert list(private_tmp.iterdir()) == []


def test_a_small_member_that_compresses_very_well_is_read(tmp_path, private_tmp):
    make_zip(tmp_path / "flat.zip", {"points.xyz": b"1 2 3\n" * 200_000})  # about 1,000 times smaller zipped
    with read_file(str(tmp_path / "flat.zip"), 100_000) as stream:
        assert sum(len(chunk) for chunk in stream.chunks) == 200_000


def test_a_member_bigger_than_the_free_disk_space_is_refused(tmp_path, private_tmp, monkeypatch):
    make_zip(tmp_path / "big.zip", {"points.xyz": b"1 2 3\n4 5 6\n"})
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: shutil._ntuple_diskusage(10 ** 9, 10 ** 9 - 1000, 1000))
    with pytest.raises(SourceError) as error:
        with read_file(str(tmp_path / "big.zip"), 10):
            pass
    assert str(error.value) == (f"{tmp_path / 'big.zip'}: member points.xyz needs 12 bytes unpacked but "
                                f"{private_tmp} has 1000 bytes free, less the 64 MB kept free")
    assert list(private_tmp.iterdir()) == []


def test_a_member_that_unpacks_to_more_than_its_header_says_is_refused(tmp_path, private_tmp):
    make_zip(tmp_path / "lying.zip", {"points.xyz": b"1 2 3\n4 5 6\n" * 100})
    declared_size(tmp_path / "lying.zip", 12)
    with pytest.raises(SourceError) as error:
        with read_file(str(tmp_path / "lying.zip"), 10):
            pass
    assert str(error.value) == (f"{tmp_path / 'lying.zip'}: cannot unpack points.xyz: Bad CRC-32 for file "
                                "'points.xyz' (a damaged archive, or a member larger than its header says)")
    assert list(private_tmp.iterdir()) == []


@pytest.mark.parametrize("offset, value", [(200, 0x7F), (100, 0xFF)])
def test_a_damaged_zip_is_one_line_naming_it(tmp_path, registry, offset, value):
    make_zip(tmp_path / "bad.zip", {"points.xyz": b"".join(b"%d %d %d\n" % (i, i * 7 % 13, i * 3) for i in range(300))})
    data = bytearray((tmp_path / "bad.zip").read_bytes())
    data[offset] = value
    (tmp_path / "bad.zip").write_bytes(bytes(data))
    with pytest.raises(SourceError) as error:
        run(tmp_path, registry, files_config(["bad.zip"]))
    assert str(error.value).startswith(f"{tmp_path / 'bad.zip'}: ")
    assert "\n" not in str(error.value)
