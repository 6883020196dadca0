"""Coordinate systems through sink.las: the input's CRS records (GeoTIFF keys, WKT) kept byte for byte, and
items of different CRSs never merged silently."""
import shutil

import laspy
import pytest

from pipeline.errors import PipelineError
from stages.las.header import crs_name, stored_records
from tests.conftest import CONFORMANCE, run


def crs_of(path):
    """The LASF_Projection records of a LAS/LAZ file, read from its bytes."""
    header = laspy.read(path).header
    data = open(path, "rb").read()
    return [(record_id, body) for user_id, record_id, _, body in
            stored_records(data[:header.offset_to_point_data], extended=False) if user_id == "LASF_Projection"]


@pytest.mark.parametrize("name, expected", [("laz/autzen_trim.laz", 'WKT PROJCS["NAD_1983_HARN_Lambert_Conformal_C'),
                                            ("las/utm17.las", "EPSG:32617")])
def test_crs_records_are_kept_byte_for_byte(tmp_path, registry, name, expected):
    shutil.copy(CONFORMANCE / name, tmp_path)
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{(CONFORMANCE / name).name}"]
          - type: sink.las
            path: out/{{name}}.las
          - type: sink.las
            path: out/{{name}}.laz
    """)
    original = crs_of(CONFORMANCE / name)
    assert original and crs_name(original).startswith(expected)
    for output in sorted((tmp_path / "out").iterdir()):
        assert crs_of(output) == original, output.name


def test_items_of_different_crs_are_not_merged(tmp_path, registry):
    for name in ("las/utm17.las", "las/simple.las"):
        shutil.copy(CONFORMANCE / name, tmp_path)
    with pytest.raises(PipelineError) as error:
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [utm17.las, simple.las]
              - type: sink.las
                path: out/all.las
                merge: true
        """)
    assert str(error.value) == ("stages[1] (sink.las): items 'utm17' (EPSG:32617) and 'simple' (no CRS) have "
                                "different coordinate systems; merge items of one CRS")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_items_of_one_crs_are_merged_with_it(tmp_path, registry):
    shutil.copy(CONFORMANCE / "las/utm17.las", tmp_path / "a.las")
    shutil.copy(CONFORMANCE / "las/utm17.las", tmp_path / "b.las")
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [a.las, b.las]
          - type: sink.las
            path: out/all.las
            merge: true
    """)
    assert crs_of(tmp_path / "out/all.las") == crs_of(CONFORMANCE / "las/utm17.las")
    assert laspy.read(tmp_path / "out/all.las").header.point_count == 2 * laspy.read(tmp_path / "a.las").header.point_count


def make_copc_like(path):
    """A LAZ 1.4 file carrying a COPC info VLR and a hierarchy EVLR (laspy refuses to write `copc` records:
    they are written as `copd` and renamed in the bytes)."""
    import numpy as np
    header = laspy.LasHeader(version="1.4", point_format=6)
    header.scales, header.offsets = np.array([0.01] * 3), np.zeros(3)
    header.vlrs.append(laspy.VLR("copd", 1, "copc info", bytes(160)))
    data = laspy.LasData(header)
    data.x, data.y, data.z = np.arange(5.0), np.arange(5.0), np.zeros(5)
    data.evlrs = laspy.vlrs.vlrlist.VLRList([laspy.VLR("copd", 1000, "EPT hierarchy", bytes(32))])
    data.write(path)
    path.write_bytes(path.read_bytes().replace(b"copd\0", b"copc\0"))
    return path


def test_a_copc_index_is_not_copied_and_a_line_says_so(tmp_path, registry, caplog):
    import logging
    make_copc_like(tmp_path / "in.copc.laz")
    original = laspy.read(tmp_path / "in.copc.laz")
    assert [v.user_id for v in original.header.vlrs] == ["copc"] and [v.user_id for v in original.evlrs] == ["copc"]
    with caplog.at_level(logging.INFO):
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [in.copc.laz]
              - type: sink.las
                path: out/{name}.laz
        """)
    written = laspy.read(tmp_path / "out/in.copc.laz")
    assert list(written.header.vlrs) == [] and not written.evlrs  # (laspy hides the LAZ VLR)
    assert list(written.x) == [0, 1, 2, 3, 4]
    assert ("stages[1] (sink.las): in.copc: the input's COPC index (its copc VLR and EVLRs) describes an octree "
            "this file does not have: not written") in caplog.messages
