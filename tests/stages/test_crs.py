"""Coordinate systems through sink.las and sink.ply: the input's CRS records (GeoTIFF keys, WKT) kept byte for
byte, items of different CRSs never merged silently, the `crs` option (an EPSG code, WKT, none) checked before any
I/O and written as each format asks, and a real COPC file (copclib) written without its octree index."""
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


def evlrs_in(path):
    """(user id, record id, bytes) of the EVLRs of a LAS/LAZ file, read from its bytes."""
    header = laspy.open(path).header
    data = open(path, "rb").read()[header.start_of_first_evlr:]
    return [(user_id, record_id, body) for user_id, record_id, _, body in
            stored_records(data, extended=True, count=header.number_of_evlrs)]


def make_copc(path, seed=7):
    """A real COPC file, written by copclib: LAS 1.4, point format 7, an octree of a root node and its eight
    children (20 points each, every attribute random), the CRS (EPSG:32632 as WKT1) in an EVLR as copclib puts
    it; its copc info VLR, extents VLR and hierarchy EVLR describe the octree."""
    import copclib
    import numpy as np
    import pyproj
    rng = np.random.default_rng(seed)
    low, size = np.array([500100.0, 4000200.0, 10.0]), 8.0
    config = copclib.CopcConfigWriter(7, copclib.Vector3(0.001, 0.001, 0.001), copclib.Vector3(500000, 4000000, 0),
                                      wkt=pyproj.CRS.from_epsg(32632).to_wkt("WKT1_GDAL"))
    config.las_header.min, config.las_header.max = copclib.Vector3(*low), copclib.Vector3(*(low + size))
    info = config.copc_info
    info.center_x, info.center_y, info.center_z = low + size / 2
    info.halfsize, info.spacing = size / 2, size / 8
    writer = copclib.FileWriter(str(path), config)
    header = writer.copc_config.las_header
    root = copclib.VoxelKey.RootKey()
    for key in [root, *root.GetChildren()]:
        points = copclib.Points(header)
        cell = size / 2 ** key.d
        for _ in range(20):
            point = points.CreatePoint()
            corner = low + cell * np.array([key.x, key.y, key.z])
            point.x, point.y, point.z = np.round(corner + rng.uniform(0, cell, 3), 3)
            point.number_of_returns = int(rng.integers(1, 16))
            point.return_number = int(rng.integers(1, point.number_of_returns + 1))
            point.intensity, point.point_source_id = (int(v) for v in rng.integers(0, 65536, 2))
            point.red, point.green, point.blue = (int(v) for v in rng.integers(0, 65536, 3))
            point.classification, point.user_data = int(rng.integers(0, 256)), int(rng.integers(0, 256))
            point.scan_angle, point.scanner_channel = int(rng.integers(-30000, 30001)), int(rng.integers(0, 4))
            point.gps_time = float(rng.uniform(1e8, 2e8))
            for flag in ("synthetic", "key_point", "withheld", "overlap", "scan_direction_flag", "edge_of_flight_line"):
                setattr(point, flag, bool(rng.integers(0, 2)))
            points.AddPoint(point)
        writer.AddNode(key, points)
    writer.Close()
    return path


def test_a_copc_file_goes_through_without_its_index(tmp_path, registry, caplog):
    """A COPC input is written as LAS, LAZ and PLY: every point and attribute as it was, the CRS kept, the copc
    records dropped with one line per LAS sink, and the LAS outputs as the specification says."""
    import logging
    import numpy as np
    from tests.las_validator import problems
    from tests.plyfile_plain import read_plain_ply
    original = laspy.read(make_copc(tmp_path / "site.copc.laz"))
    assert [(v.user_id, v.record_id) for v in original.header.vlrs] == [("copc", 1), ("copc", 10000)]
    [hierarchy, wkt] = evlrs_in(tmp_path / "site.copc.laz")
    assert hierarchy[:2] == ("copc", 1000) and wkt[:2] == ("LASF_Projection", 2112)
    with caplog.at_level(logging.INFO):
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [site.copc.laz]
              - type: sink.las
                path: out/{name}.las
              - type: sink.las
                path: out/{name}.laz
              - type: sink.ply
                path: out/{name}.ply
        """)
    for label, suffix in (("stages[1]", "las"), ("stages[2]", "laz")):
        line = (f"{label} (sink.las): site.copc: the input's COPC index (its copc VLR and EVLRs) describes an octree "
                "this file does not have: not written")
        assert caplog.messages.count(line) == 1
        written = laspy.read(tmp_path / f"out/site.copc.{suffix}")
        assert list(written.header.vlrs) == []  # (laspy hides the LAZ VLR)
        assert evlrs_in(tmp_path / f"out/site.copc.{suffix}") == [wkt]  # the CRS byte for byte
        assert written.header.global_encoding.wkt and written.header.point_format.id == 7
        assert list(written.header.point_format.dimension_names) == list(original.header.point_format.dimension_names)
        for name in original.header.point_format.dimension_names:
            assert np.array_equal(written[name], original[name]), (suffix, name)
        assert list(written.header.number_of_points_by_return) == \
            np.bincount(original.return_number, minlength=16)[1:].tolist()  # (copclib left them 0)
        assert problems(tmp_path / f"out/site.copc.{suffix}") == []
    ply = read_plain_ply(tmp_path / "out/site.copc.ply")
    for axis in "xyz":
        assert np.array_equal(ply[axis], np.asarray(original[axis]))
    for name in ("intensity", "classification", "user_data", "scan_angle", "point_source_id", "gps_time",
                 "return_number", "number_of_returns", "synthetic", "key_point", "withheld", "overlap",
                 "scanner_channel", "scan_direction_flag", "edge_of_flight_line"):
        assert np.array_equal(ply[name], np.asarray(original[name])), name
    for colour in ("red", "green", "blue"):  # 16-bit colours as the uchar viewers expect: round(v / 257)
        assert np.array_equal(ply[colour], np.round(np.asarray(original[colour]) / 257))
    assert ply_crs_comments(tmp_path / "out/site.copc.ply") == [" ".join(wkt[2].rstrip(b"\0").decode().split())]


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


@pytest.mark.parametrize("crs, message", [
    ("UTM 32", "expected keep, none, an EPSG code such as EPSG:25832 or EPSG:25832+7837, or WKT, got 'UTM 32'"),
    ("EPSG:999999", "'EPSG:999999' is not a coordinate system PROJ knows (crs not found: EPSG:999999)"),
    ("EPSG:7837+25832", "'EPSG:7837+25832' is not a coordinate system PROJ knows (components of the compound CRS do "
                        "not belong to one of the allowed combinations of "
                        "http://docs.opengeospatial.org/as/18-005r5/18-005r5.html#34)"),
    ('PROJCS[\\"bad', "'PROJCS[\"bad' is not a coordinate system PROJ knows (missing , or ])"),
])
@pytest.mark.parametrize("sink", ["sink.las", "sink.ply"])
def test_a_bad_crs_is_one_line_before_any_io(tmp_path, registry, sink, crs, message):
    from pipeline import config
    from pipeline.errors import ConfigError
    from tests.conftest import write_config
    path = write_config(tmp_path, f"""
        version: 1
        stages:
          - type: source.files
            paths: [nothing-is-read.las]
          - type: {sink}
            path: out/{{name}}.{sink[5:]}
            crs: "{crs}"
    """)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry)
    assert str(error.value) == f"{path}:7: stages[1] ({sink}) > crs: {message}"


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


def test_wkt_that_is_not_ascii_is_written_by_sink_las_as_wkt1_and_refused_by_sink_ply(tmp_path, registry):
    import json
    import pyproj
    from pipeline import config
    from pipeline.errors import ConfigError
    from tests.conftest import write_config
    wkt = pyproj.CRS.from_epsg(25832).to_wkt()  # WKT2, whose area of use reads "6°E and 12°E"
    assert not wkt.isascii()
    written = declare(tmp_path, registry, "las/test1_4.las", json.dumps(wkt)[1:-1])
    [(record_id, data)] = crs_of(written)
    assert data.startswith(b'PROJCS["ETRS89 / UTM zone 32N"')
    assert pyproj.CRS.from_wkt(data[:-1].decode()).to_epsg() == 25832
    path = write_config(tmp_path, f"""
        version: 1
        stages:
          - type: source.files
            paths: [test1_4.las]
          - type: sink.ply
            path: out/{{name}}.ply
            crs: {json.dumps(wkt)}
    """)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry)
    assert str(error.value) == (f"{path}:7: stages[1] (sink.ply) > crs: 'PROJCRS[\"ETRS89 / UTM zone 32N\","
                                "BASEGEOG...' holds characters that are not printable ASCII, which a PLY header "
                                "cannot hold: give an EPSG code, or WKT1 (pyproj's CRS.to_wkt('WKT1_GDAL'))")


def ply_crs_comments(path):
    """The `comment crs` lines of a PLY header, without their `comment crs `."""
    head = path.read_bytes().split(b"end_header")[0].decode("ascii")
    return [line[len("comment crs "):] for line in head.splitlines() if line.startswith("comment crs ")]


def ply_declare(tmp_path, registry, crs, name="las/utm17.las", extra=""):
    import json
    tmp_path.mkdir(exist_ok=True)
    shutil.copy(CONFORMANCE / name, tmp_path)
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{(CONFORMANCE / name).name}"]{extra}
          - type: sink.ply
            path: out/{{name}}.ply
            crs: {json.dumps(crs)}
    """)
    return tmp_path / "out" / f"{(CONFORMANCE / name).stem}.ply"


@pytest.mark.parametrize("code", ["EPSG:25832+7837", "epsg:32632"])
def test_sink_ply_declares_an_epsg_code_given(tmp_path, registry, code):
    import pyproj
    from tests.plyfile_plain import read_plain_ply
    written = ply_declare(tmp_path, registry, code)
    [declared] = ply_crs_comments(written)  # the input's EPSG:32617 replaced
    assert declared == code.upper()
    assert pyproj.CRS.from_user_input(declared).equals(pyproj.CRS.from_user_input(code))
    assert len(read_plain_ply(written)["x"]) == laspy.read(CONFORMANCE / "las/utm17.las").header.point_count


def test_sink_ply_declares_wkt_given_on_one_line(tmp_path, registry):
    import pyproj
    wkt = pyproj.CRS.from_epsg(25832).to_wkt("WKT1_GDAL", pretty=True)  # over many lines, as a user pastes it
    assert "\n" in wkt
    written = ply_declare(tmp_path, registry, wkt)
    [declared] = ply_crs_comments(written)
    assert declared == " ".join(wkt.split()) and pyproj.CRS.from_wkt(declared).to_epsg() == 25832


def test_sink_ply_keep_and_none(tmp_path, registry, caplog):
    import logging
    assert ply_crs_comments(ply_declare(tmp_path, registry, "keep")) == ["EPSG:32617"]
    assert ply_crs_comments(ply_declare(tmp_path / "none", registry, "none")) == []
    with caplog.at_level(logging.INFO):
        moved = ply_declare(tmp_path / "moved", registry, "keep", extra="""
          - type: transform.matrix
            matrix: [[1, 0, 0, 10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]""")
    assert ply_crs_comments(moved) == ["EPSG:32617"]
    assert ("stages[2] (sink.ply): utm17: the coordinates were moved; the input's coordinate system (EPSG:32617) is "
            "declared as it was: set `crs` to the one they are in now") in caplog.messages


def test_the_report_records_each_ply_output_crs(tmp_path, registry):
    import json
    from tests.conftest import cli, write_config
    shutil.copy(CONFORMANCE / "las/utm17.las", tmp_path)
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [utm17.las]
          - type: sink.ply
            path: out/{name}.ply
          - type: sink.ply
            path: out/{name}_given.ply
            crs: EPSG:25832+7837
          - type: sink.ply
            path: out/{name}_none.ply
            crs: none
    """)
    done = cli("run", "-q", path, "--report", tmp_path / "run.json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    outputs = json.loads((tmp_path / "run.json").read_text())["items"][0]["outputs"]
    assert [output.get("crs") for output in outputs] == ["EPSG:32617", "EPSG:25832+7837", None]
    assert "crs" not in outputs[2]  # a PLY that declares none says nothing


@pytest.mark.parametrize("crs, declared", [("keep", None), ("EPSG:32617", ["EPSG:32617"])])
def test_sink_ply_merges_items_of_different_crs_only_when_crs_says_which(tmp_path, registry, crs, declared):
    for name in ("las/utm17.las", "las/simple.las"):
        shutil.copy(CONFORMANCE / name, tmp_path)
    body = f"""
        version: 1
        stages:
          - type: source.files
            paths: [utm17.las, simple.las]
          - type: sink.ply
            path: out/all.ply
            merge: true
            crs: {crs}
    """
    if declared is None:
        with pytest.raises(PipelineError) as error:
            run(tmp_path, registry, body)
        assert str(error.value) == ("stages[1] (sink.ply): items 'utm17' (EPSG:32617) and 'simple' (no CRS) have "
                                    "different coordinate systems; merge items of one CRS, or set `crs` to the one the "
                                    "file declares")
        return
    run(tmp_path, registry, body)
    assert ply_crs_comments(tmp_path / "out/all.ply") == declared
