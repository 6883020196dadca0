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
