"""PTS and XYZ/TXT text clouds, read through source.files, compared with the numbers in the files."""
import logging

import numpy as np
import pytest

from pipeline import config
from pipeline.errors import SourceError
from pipeline.runner import Runner
from stages.files import read_file
from tests.conftest import write_config
from tests.plyfile_plain import read_plain_ply
from tests.conftest import run

PTS_COLUMNS = ("x", "y", "z", "intensity", "red", "green", "blue")


def parse_rows(path, separator=None, skip=0):
    """The numbers of a text file, one list per line, parsed here without the reader's code."""
    lines = [line for line in path.read_text().splitlines() if line.strip()][skip:]
    return [[float(word) for word in line.split(separator)] for line in lines]


def read_all(path, chunk_size=1000, columns=None):
    with read_file(str(path), chunk_size, columns) as stream:
        chunks = list(stream.chunks)
        info = stream.info
    return info, chunks, np.concatenate(chunks)


def expected_pts(rows):
    """What a 7-column PTS row is as a point: intensity raw + 2048, colours as they are."""
    table = np.array(rows)
    return {"x": table[:, 0], "y": table[:, 1], "z": table[:, 2], "intensity": table[:, 3] + 2048,
            "red": table[:, 4], "green": table[:, 5], "blue": table[:, 6]}


@pytest.mark.parametrize("name, count", [("pts/test.pts", 19), ("pts/autzen.pts", 10)])
def test_pts_files_are_read_with_exact_values_and_types(conformance, name, count):
    path = conformance / name
    rows = parse_rows(path, skip=1)
    assert int(path.read_text().split()[0]) == count == len(rows)
    info, chunks, points = read_all(path)
    assert info.source_format == "pts" and info.point_count == count
    assert points.dtype == np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2"),
                                     ("red", "u2"), ("green", "u2"), ("blue", "u2")])
    assert len(points) == count
    for column, values in expected_pts(rows).items():
        assert points[column].tolist() == values.tolist(), column
    # the raw Leica value comes back by subtracting the shift
    assert (points["intensity"].astype(int) - 2048).tolist() == [int(r[3]) for r in rows]


def test_autzen_pts_first_point_exactly(conformance):
    _, _, points = read_all(conformance / "pts/autzen.pts")
    assert points[0].tolist() == (636110.300003, 849345.050003, 512.139999, 2048 - 1613, 52, 70, 64)
    assert points[2].tolist() == (636125.449997, 849240.250015, 428.150009, 2048 + 602, 120, 127, 103)


def test_pts_that_says_8_points_but_holds_9_reads_all_9_with_a_warning(conformance, caplog):
    path = conformance / "pts/bunny_8.pts"
    rows = parse_rows(path, skip=1)
    assert path.read_text().splitlines()[0].strip() == "8" and len(rows) == 9
    with caplog.at_level(logging.WARNING):
        info, _, points = read_all(path)
    assert info.point_count == 8  # what the header says
    assert points.dtype.names == ("x", "y", "z")
    assert np.stack([points["x"], points["y"], points["z"]], axis=1).tolist() == rows
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{path}: line 1 says 8 points but 9 follow; reading 9"]


def test_bunny_8_through_a_config_writes_all_9_points(tmp_path, registry, conformance, caplog):
    path = conformance / "pts/bunny_8.pts"
    with caplog.at_level(logging.WARNING):
        results = run(tmp_path, registry, f"""
            version: 1
            stages:
              - type: source.files
                paths: ["{path}"]
              - type: sink.ply
                path: out/{{name}}.ply
        """)
    assert results[0].points_in == results[0].points_out == 9
    assert f"{path}: line 1 says 8 points but 9 follow; reading 9" in [r.getMessage() for r in caplog.records]
    written = read_plain_ply(tmp_path / "out/bunny_8.ply")
    assert np.stack([written["x"], written["y"], written["z"]], axis=1).tolist() == parse_rows(path, skip=1)


def test_multi_block_pts_reads_every_block(tmp_path, caplog):
    path = tmp_path / "blocks.pts"
    path.write_text("2\n1.5 2.5 3.5 -2048 1 2 3\n4 5 6 2047 255 254 253\n"
                    "3\n7 8 9 0 10 20 30\n-1 -2 -3 -1 0 0 0\n10.25 11 12 5 9 9 9\n")
    with caplog.at_level(logging.WARNING):
        info, chunks, points = read_all(path, chunk_size=2)
    assert [len(c) for c in chunks] == [2, 2, 1]
    assert info.point_count == 2  # the first count line; the stream holds every block
    assert points["x"].tolist() == [1.5, 4, 7, -1, 10.25]
    assert points["z"].tolist() == [3.5, 6, 9, -3, 12]
    assert points["intensity"].tolist() == [0, 4095, 2048, 2047, 2053]
    assert points["red"].tolist() == [1, 255, 10, 0, 9]
    assert points["blue"].tolist() == [3, 253, 30, 0, 9]
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_multi_block_pts_with_a_short_block_warns_about_that_block(tmp_path, caplog):
    path = tmp_path / "short.pts"
    path.write_text("1\n1 2 3 0 1 1 1\n3\n4 5 6 0 2 2 2\n7 8 9 0 3 3 3\n")
    with caplog.at_level(logging.WARNING):
        _, _, points = read_all(path)
    assert points["x"].tolist() == [1, 4, 7]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{path}: line 3 says 3 points but 2 follow; reading 2"]


def test_xyz_three_columns_exact_values(conformance):
    path = conformance / "xyz/data.xyz"
    rows = parse_rows(path)
    info, _, points = read_all(path)
    assert info.source_format == "xyz" and info.point_count is None
    assert points.dtype == np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8")])
    assert len(points) == len(rows) == 400
    assert np.stack([points["x"], points["y"], points["z"]], axis=1).tolist() == rows
    assert points[0].tolist() == (440750.0, 3751290.0, 107.0)


def test_comma_header_line_names_the_columns(tmp_path):
    path = tmp_path / "rgb.csv"
    path.write_text("X,Y,Z,R,G,B\n1.25,2,3,255,0,7\n-4,5.5,6,1,2,3\n")
    _, _, points = read_all(path)
    assert points.dtype.names == ("x", "y", "z", "red", "green", "blue")
    assert points.tolist() == [(1.25, 2.0, 3.0, 255, 0, 7), (-4.0, 5.5, 6.0, 1, 2, 3)]


def test_cloudcompare_comment_header_names_the_columns(tmp_path):
    path = tmp_path / "cc.txt"
    path.write_text("//X Y Z Intensity\n1 2 3 400\n4.5 5 6 65535\n")
    _, _, points = read_all(path)
    assert points.dtype == np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2")])
    assert points.tolist() == [(1.0, 2.0, 3.0, 400), (4.5, 5.0, 6.0, 65535)]


def test_cloudcompare_comma_header(tmp_path):
    path = tmp_path / "cc.txt"
    path.write_text("//X,Y,Z,R,G,B\n1,2,3,10,20,30\n")
    _, _, points = read_all(path)
    assert points.dtype.names == ("x", "y", "z", "red", "green", "blue")
    assert points.tolist() == [(1.0, 2.0, 3.0, 10, 20, 30)]


def test_semicolon_separated_values(tmp_path):
    path = tmp_path / "semi.txt"
    path.write_text("1.5;2;3\n4;-5;6.125\n")
    _, _, points = read_all(path)
    assert points.dtype.names == ("x", "y", "z")
    assert points.tolist() == [(1.5, 2.0, 3.0), (4.0, -5.0, 6.125)]


def test_columns_option_names_and_skips_columns(tmp_path, registry):
    (tmp_path / "cols.txt").write_text("1 2 3 99.5 40 7\n4 5 6 -98 41 8\n")
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [cols.txt]
            columns: [y, x, z, _, intensity, classification]
          - type: sink.ply
            path: out/{name}.ply
    """)
    written = read_plain_ply(tmp_path / "out/cols.ply")
    assert written.dtype.names == ("x", "y", "z", "intensity", "classification")
    assert written.dtype["intensity"] == np.dtype("<u2") and written.dtype["classification"] == np.dtype("u1")
    assert written.tolist() == [(2.0, 1.0, 3.0, 40, 7), (5.0, 4.0, 6.0, 41, 8)]


def test_chunk_size_is_respected(conformance):
    _, chunks, points = read_all(conformance / "pts/test.pts", chunk_size=5)
    assert [len(c) for c in chunks] == [5, 5, 5, 4]
    _, chunks, _ = read_all(conformance / "xyz/data.xyz", chunk_size=128)
    assert [len(c) for c in chunks] == [128, 128, 128, 16]


def test_chunk_size_through_a_config(tmp_path, registry):
    (tmp_path / "pts.xyz").write_text("".join(f"{i} {i * 2} {i * 3}\n" for i in range(7)))
    seen = []
    cfg = config.load(write_config(tmp_path, """
        version: 1
        stages:
          - type: source.files
            paths: [pts.xyz]
            chunk_size: 3
          - type: sink.ply
            path: out/{name}.ply
    """), registry)
    runner = Runner(cfg, registry)
    runner.progress.advance = seen.append
    runner.run(runner.plan())
    assert seen == [3, 3, 1]
    assert read_plain_ply(tmp_path / "out/pts.ply")["y"].tolist() == [i * 2 for i in range(7)]


def test_no_z_column_gives_z_zero_with_a_warning(tmp_path, registry, caplog):
    path = tmp_path / "flat.txt"
    path.write_text("1 2 7\n3.5 4 8\n")
    with caplog.at_level(logging.WARNING):
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [flat.txt]
                columns: [x, y, intensity]
              - type: sink.ply
                path: out/{name}.ply
        """)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{path}: no z column; z is set to 0"]
    written = read_plain_ply(tmp_path / "out/flat.ply")
    assert written.tolist() == [(1.0, 2.0, 0.0, 7), (3.5, 4.0, 0.0, 8)]


def test_no_z_column_named_by_a_header(tmp_path, caplog):
    path = tmp_path / "flat.txt"
    path.write_text("X Y\n1 2\n3 4\n")
    with caplog.at_level(logging.WARNING):
        _, _, points = read_all(path)
    assert points.tolist() == [(1.0, 2.0, 0.0), (3.0, 4.0, 0.0)]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{path}: no z column; z is set to 0"]


def read_error(path, columns=None):
    with pytest.raises(SourceError) as error:
        read_all(path, columns=columns)
    return str(error.value)


def test_line_with_the_wrong_number_of_values(tmp_path):
    path = tmp_path / "short.xyz"
    path.write_text("1 2 3\n4 5 6\n\n7 8\n")
    assert read_error(path) == f"{path}: line 4: expected 3 values (x y z), got 2"


def test_a_value_that_is_not_a_number(tmp_path):
    path = tmp_path / "word.xyz"
    path.write_text("1 2 3\n4 5 six\n")
    assert read_error(path) == f"{path}: line 2: 'six' is not a number"


def test_intensity_that_is_not_an_integer(tmp_path):
    path = tmp_path / "i.xyz"
    path.write_text("1 2 3 4\n5 6 7 8.5\n")
    assert read_error(path) == (f"{path}: line 2: intensity 8.5 is not an integer that fits uint16; name the "
                                "columns with the `columns` option to read it as another attribute")


def test_pts_intensity_below_the_leica_range(tmp_path):
    path = tmp_path / "low.pts"
    path.write_text("2\n1 2 3 0 1 1 1\n4 5 6 -2049 1 1 1\n")
    assert read_error(path) == (f"{path}: line 3: intensity -2049 is not an integer that fits uint16; name the "
                                "columns with the `columns` option to read it as another attribute")


def test_wrong_number_of_column_names(tmp_path, registry):
    (tmp_path / "three.xyz").write_text("1 2 3\n")
    with pytest.raises(SourceError) as error:
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [three.xyz]
                columns: [x, y]
              - type: sink.ply
                path: out/{name}.ply
        """)
    assert str(error.value) == f"{tmp_path / 'three.xyz'}: 2 column names (x y) for 3 values per line"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name, text, message", [
    ("c.xyz", "1 2 3\n4 5 6\nnan 8 9\n", "line 3: x nan is not a finite number"),
    ("c.xyz", "X,Y,Z\n1,2,3\n4,-inf,6\n", "line 3: y -inf is not a finite number"),
    ("c.pts", "2\n1 2 3 0 1 2 3\n4 5 1e999 0 1 2 3\n", "line 3: z 1e999 is not a finite number"),
])
def test_coordinates_that_are_not_finite_are_refused_naming_the_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(SourceError) as error:
        read_all(tmp_path / name, chunk_size=2)
    assert str(error.value) == f"{tmp_path / name}: {message}"


def test_nan_in_an_attribute_that_is_not_a_coordinate_is_kept(tmp_path):
    (tmp_path / "c.xyz").write_text("x y z scalar\n1 2 3 nan\n4 5 6 inf\n")
    _, _, points = read_all(tmp_path / "c.xyz")
    assert np.isnan(points["scalar"][0]) and points["scalar"][1] == np.inf
