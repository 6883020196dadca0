"""Coordinate systems through sink.las: the input's CRS records (GeoTIFF keys, WKT) kept byte for byte, and
items of different CRSs never merged silently."""
import shutil

import laspy
import pytest

from pipeline.errors import PipelineError
from stages.las.crs import crs_name
from stages.las.header import stored_records
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
                                "different coordinate systems; merge items of one CRS, or set `crs` to the one the file "
                                "declares")
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


def declare(tmp_path, registry, name, crs, extra=""):
    shutil.copy(CONFORMANCE / name, tmp_path)
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{(CONFORMANCE / name).name}"]{extra}
          - type: sink.las
            path: out/{{name}}.las
            crs: "{crs}"
    """)
    return tmp_path / "out" / f"{(CONFORMANCE / name).stem}.las"


def test_an_epsg_code_is_written_as_ogc_wkt1_for_point_formats_6_to_10(tmp_path, registry):
    import pyproj
    from tests.las_validator import problems
    written = declare(tmp_path, registry, "las/test1_4.las", "EPSG:25832+7837")
    header = laspy.read(written).header
    [(record_id, data)] = crs_of(written)
    assert [v.user_id for v in header.vlrs] == ["LASF_Projection"]
    wkt = data.rstrip(b"\0").decode()
    assert (record_id, wkt.split("[")[0]) == (2112, "COMPD_CS")  # WKT1: LAS 1.4 allows no WKT2
    assert pyproj.CRS.from_wkt(wkt).equals(pyproj.CRS.from_user_input("EPSG:25832+7837"))
    assert header.global_encoding.wkt and problems(written) == []


def test_an_epsg_code_is_written_as_geotiff_keys_for_point_formats_0_to_5(tmp_path, registry):
    written = declare(tmp_path, registry, "laz/autzen_trim.laz", "EPSG:25832+7837")
    header = laspy.read(written).header
    assert [(v.user_id, v.record_id) for v in header.vlrs] == [("LASF_Projection", 34735)]  # the old CRS gone
    assert crs_name(crs_of(written)) == "EPSG:25832+7837" and not header.global_encoding.wkt
    assert header.parse_crs().to_epsg() == 25832


def test_a_crs_without_epsg_code_cannot_be_geotiff_keys(tmp_path, registry):
    wkt = ('PROJCS["local",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
           'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
           'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",13],PARAMETER["scale_factor",1],'
           'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]')
    with pytest.raises(PipelineError) as error:
        declare(tmp_path, registry, "las/utm17.las", wkt.replace('"', '\\"'))
    assert str(error.value) == ("stages[1] (sink.las): utm17: crs 'local' has no EPSG code, so point format 3 "
                                "(GeoTIFF keys) cannot declare it: give an EPSG code, or write LAS 1.4 from an input "
                                "of point format 6 to 10 (OGC WKT)")


def test_none_declares_no_crs(tmp_path, registry):
    written = declare(tmp_path, registry, "laz/autzen_trim.laz", "none")
    assert crs_of(written) == [] and [v.user_id for v in laspy.read(written).header.vlrs] == []


def test_a_bad_crs_is_one_line(tmp_path, registry):
    from pipeline.errors import ConfigError
    with pytest.raises(ConfigError) as error:
        declare(tmp_path, registry, "las/utm17.las", "UTM 32")
    assert str(error.value).endswith("stages[1] (sink.las) > crs: expected keep, none, an EPSG code such as "
                                     "EPSG:25832 or EPSG:25832+7837, or WKT, got 'UTM 32'")
    with pytest.raises(PipelineError) as error:
        declare(tmp_path, registry, "las/utm17.las", "EPSG:999999")
    assert str(error.value).startswith("stages[1] (sink.las): utm17: `crs`: crs 'EPSG:999999': ")


def test_kept_crs_of_moved_coordinates_is_said_in_one_line(tmp_path, registry, caplog):
    import logging
    with caplog.at_level(logging.INFO):
        written = declare(tmp_path, registry, "las/utm17.las", "keep", """
          - type: transform.matrix
            matrix: [[1, 0, 0, 10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]""")
    assert crs_of(written) == crs_of(CONFORMANCE / "las/utm17.las")
    assert ("stages[2] (sink.las): utm17: the coordinates were moved; the input's coordinate system (EPSG:32617) is "
            "declared as it was: set `crs` to the one they are in now") in caplog.messages


def test_the_report_records_each_las_output_crs(tmp_path, registry):
    import json
    from tests.conftest import cli, write_config
    shutil.copy(CONFORMANCE / "las/utm17.las", tmp_path)
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [utm17.las]
          - type: sink.las
            path: out/{name}.las
          - type: sink.las
            path: out/{name}.laz
            crs: EPSG:25832+7837
          - type: sink.ply
            path: out/{name}.ply
    """)
    done = cli("run", "-q", path, "--report", tmp_path / "run.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outputs = json.loads((tmp_path / "run.json").read_text())["items"][0]["outputs"]
    assert [output["crs"] for output in outputs] == ["EPSG:32617", "EPSG:25832+7837", "EPSG:32617"]


def test_sink_ply_declares_the_input_crs_in_a_comment(tmp_path, registry):
    import pyproj
    from tests.plyfile_plain import read_plain_ply
    for name in ("las/utm17.las", "laz/autzen_trim.laz"):
        shutil.copy(CONFORMANCE / name, tmp_path)
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [utm17.las, autzen_trim.laz]
          - type: sink.ply
            path: out/{name}.ply
    """)
    comments = {}
    for name in ("utm17", "autzen_trim"):
        head = (tmp_path / f"out/{name}.ply").read_bytes().split(b"end_header")[0].decode("ascii")
        comments[name] = [line[len("comment crs "):] for line in head.splitlines() if line.startswith("comment crs ")]
        assert len(read_plain_ply(tmp_path / f"out/{name}.ply")["x"]) == laspy.read(CONFORMANCE / (
            "las/utm17.las" if name == "utm17" else "laz/autzen_trim.laz")).header.point_count
    assert comments["utm17"] == ["EPSG:32617"]
    [wkt] = comments["autzen_trim"]
    assert pyproj.CRS.from_wkt(wkt).name == "NAD_1983_HARN_Lambert_Conformal_Conic"
