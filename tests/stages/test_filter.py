"""transform.filter: the expression's grammar and errors, and the points kept, against masks computed here with
numpy from what laspy reads, with every kept record exact."""
import ast
import operator
from pathlib import Path

import laspy
import numpy as np
import pytest

from pipeline.chunk import Chunk
from pipeline.errors import ConfigError, StageError
from stages import filter as filtering
from stages.filter import And, Compare, ExpressionError, Member, Not, Or, compiled, parse
from tests.conftest import make_las, run
from tests.plyfile_plain import read_plain_ply

COUNT = 5000
LABEL = "stages[1] (transform.filter)"


@pytest.fixture(params=[(3, "1.2"), (7, "1.4")], ids=["format3", "format7"])
def survey(request, tmp_path):
    """Random survey data at UTM coordinates, some gps_time values NaN."""
    point_format, version = request.param
    rng = np.random.default_rng(23)
    xyz = rng.uniform([500_000, 4_000_000, 10], [500_100, 4_000_100, 40], (COUNT, 3))
    gps_time = rng.uniform(0, 1e6, COUNT)
    gps_time[::50] = np.nan
    make_las(tmp_path / "in.las", xyz, point_format=point_format, version=version, gps_time=gps_time,
             intensity=rng.integers(0, 16, COUNT), classification=rng.integers(0, 31, COUNT),
             red=rng.integers(0, 65535, COUNT), return_number=rng.integers(1, 6, COUNT),
             number_of_returns=rng.integers(1, 6, COUNT))
    return tmp_path


def filtered(folder, registry, where, chunk_size=65536, sink="las", source="in.las"):
    results = run(folder, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [{source}]
            chunk_size: {chunk_size}
          - type: transform.filter
            where: '{where}'
          - type: sink.{sink}
            path: out/{{name}}.{sink}
    """)
    return results, folder / f"out/{Path(source).stem}.{sink}"


def attributes(path):
    """Every attribute of a LAS file as plain numpy arrays, by laspy."""
    las = laspy.read(path)
    values = {name: np.asarray(las[name]) for name in las.point_format.dimension_names}
    return values | {"x": np.asarray(las.x), "y": np.asarray(las.y), "z": np.asarray(las.z)}


def in_list(values, listed):
    return np.isin(values, listed)


SURVEY_CASES = [
    ("classification != 7 and z > 25.5 and intensity in [1, 2, 3]",
     lambda p: (p["classification"] != 7) & (p["z"] > 25.5) & in_list(p["intensity"], [1, 2, 3])),
    ("classification in [2, 6]", lambda p: in_list(p["classification"], [2, 6])),
    ("not classification in [2, 3, 5, 7, 11, 13, 17, 19, 23]",
     lambda p: ~in_list(p["classification"], [2, 3, 5, 7, 11, 13, 17, 19, 23])),
    ("intensity not in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", lambda p: ~in_list(p["intensity"], range(10))),
    ("return_number == 1 or number_of_returns > 3", lambda p: (p["return_number"] == 1) | (p["number_of_returns"] > 3)),
    ("(z < 15 or z >= 35) and not (intensity < 4)", lambda p: ((p["z"] < 15) | (p["z"] >= 35)) & ~(p["intensity"] < 4)),
    ("gps_time > 5e5 and gps_time <= 7.5e5", lambda p: (p["gps_time"] > 5e5) & (p["gps_time"] <= 7.5e5)),
    ("not gps_time > 5e5", lambda p: ~(p["gps_time"] > 5e5)),  # NaN: the comparison is false, `not` true
    ("gps_time != 1 and classification < 9", lambda p: (p["gps_time"] != 1) & (p["classification"] < 9)),  # NaN: kept
    ("x > 500050.25 and y < 4000040", lambda p: (p["x"] > 500050.25) & (p["y"] < 4000040)),
    ("1 < return_number and 6 > classification", lambda p: (p["return_number"] > 1) & (p["classification"] < 6)),
    ("classification == 300 or intensity > -1 and z > 20", lambda p: p["z"] > 20),
    ("((classification < 10) and ((z > 12.5)) or (not (x <= 500020)))",
     lambda p: (p["classification"] < 10) & (p["z"] > 12.5) | ~(p["x"] <= 500020)),
    ("z >= -1e3", lambda p: np.ones(len(p["z"]), bool)),
]


@pytest.mark.parametrize("where, expected", SURVEY_CASES, ids=[case[0] for case in SURVEY_CASES])
@pytest.mark.parametrize("chunk_size", [64, 65536])
def test_the_kept_points_are_those_of_the_expression_with_every_record_exact(survey, registry, where, expected,
                                                                            chunk_size):
    results, path = filtered(survey, registry, where, chunk_size)
    original = laspy.read(survey / "in.las").points.array
    mask = expected(attributes(survey / "in.las"))
    assert 0 < mask.sum() < COUNT or where == "z >= -1e3"
    written = laspy.read(path)
    assert written.points.array.tobytes() == original[mask].tobytes()  # every field of every kept point
    assert written.header.point_count == results[0].points_out == mask.sum()
    assert results[0].points_in == COUNT
    assert results[0].applied == ({"stage": LABEL, "where": where},)


@pytest.mark.parametrize("chunk_size", [100, 65536])
def test_lists_of_many_values_of_every_kind(survey, registry, chunk_size):
    """Lists long enough to take the lookup table (red, 2-byte) and numpy's isin (gps_time, float64)."""
    p = attributes(survey / "in.las")
    reds = [int(v) for v in p["red"][7:300:13]] + [70000, -3, 12.5]  # the last three: values red cannot hold
    times = [float(v) for v in p["gps_time"][1:500:37] if not np.isnan(v)] + [0.5]
    where = (f"red in [{', '.join(map(str, reds))}] or gps_time in [{', '.join(map(repr, times))}]")
    _, path = filtered(survey, registry, where, chunk_size)
    mask = in_list(p["red"], reds[:-3]) | in_list(p["gps_time"], times)
    assert 30 < mask.sum() < COUNT
    assert laspy.read(path).points.array.tobytes() == laspy.read(survey / "in.las").points.array[mask].tobytes()


def test_into_ply_every_attribute_of_the_kept_points(survey, registry):
    where = "classification != 7 and (z > 25.5 or intensity in [1, 2, 3])"
    _, path = filtered(survey, registry, where, chunk_size=100, sink="ply")
    p = attributes(survey / "in.las")
    mask = (p["classification"] != 7) & ((p["z"] > 25.5) | in_list(p["intensity"], [1, 2, 3]))
    vertices = read_plain_ply(path)
    assert len(vertices) == mask.sum()
    for name in ("x", "y", "z", "intensity", "classification", "return_number", "number_of_returns"):
        assert np.array_equal(vertices[name], p[name][mask]), name
    assert np.array_equal(vertices["gps_time"], p["gps_time"][mask], equal_nan=True)


def test_a_big_endian_ply_read_as_columns_keeps_every_property_of_the_kept_vertices(tmp_path, registry):
    """A source without records (its chunks are columns), types of the file's byte order, NaN in a float."""
    rng = np.random.default_rng(3)
    vertices = np.zeros(3000, [("x", ">f8"), ("y", ">f8"), ("z", ">f8"), ("intensity", ">u2"),
                               ("classification", "u1"), ("confidence", ">f4")])
    for axis, low in zip("xyz", (500_000, 4_000_000, 10)):
        vertices[axis] = rng.uniform(low, low + 100, len(vertices))
    vertices["intensity"] = rng.integers(0, 16, len(vertices))
    vertices["classification"] = rng.integers(0, 10, len(vertices))
    vertices["confidence"] = rng.uniform(0, 1, len(vertices))
    vertices["confidence"][::7] = np.nan
    properties = "".join(f"property {kind} {name}\n" for name, kind in zip(
        vertices.dtype.names, ("double", "double", "double", "ushort", "uchar", "float")))
    (tmp_path / "in.ply").write_bytes(f"ply\nformat binary_big_endian 1.0\nelement vertex {len(vertices)}\n"
                                      f"{properties}end_header\n".encode() + vertices.tobytes())
    where = "confidence > 0.5 or intensity in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] and classification != 3"
    _, path = filtered(tmp_path, registry, where, chunk_size=256, sink="ply", source="in.ply")
    mask = (vertices["confidence"] > 0.5) | in_list(vertices["intensity"], range(1, 11)) & (
        vertices["classification"] != 3)
    assert 0 < mask.sum() < len(vertices)
    written = read_plain_ply(path)
    assert written.dtype.names == vertices.dtype.names
    for name in vertices.dtype.names:
        assert np.array_equal(written[name], vertices[name][mask], equal_nan=True), name


@pytest.mark.parametrize("where", ["classification == 300", "z > 1e9"])  # decided from the type; computed
def test_a_filter_that_keeps_nothing_writes_a_valid_empty_las(survey, registry, where):
    results, path = filtered(survey, registry, where, chunk_size=1000)
    written = laspy.read(path)
    assert written.header.point_count == len(written.points) == results[0].points_out == 0
    original = laspy.read(survey / "in.las")
    assert written.header.point_format.id == original.header.point_format.id
    assert written.header.version == original.header.version


# ---------------------------------------------------------------- the conformance corpus

CORPUS_CASES = [
    ("las/1.2_0.las", "intensity >= 0 and not classification == 200"),  # point format 0 (one point each)
    ("las/1.2_1.las", "gps_time < 0"),  # format 1
    ("las/1.2_2.las", "red > -1"),  # format 2
    ("las/1.2_3.las", "return_number in [1, 2] or z > 1e6"),  # format 3
    ("las/simple.las", "classification == 2 and z > 450.5 or intensity in [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"),
    ("las/test1_4.las", "return_number > 1 and gps_time < 83177420.6 or scan_angle < 2839"),  # format 6, LAS 1.4
    ("las/extrabytes.las", "Time > 247562 and Intensity < 61 or classification == 2"),  # extra bytes, u8 and u4
    ("las/gps-time-nan.las", "not gps_time > 0"),  # NaN: kept
    ("las/gps-time-nan.las", "gps_time in [1, 2]"),  # NaN: dropped
    ("laz/autzen_trim.laz", "classification == 2 and intensity > 20 and not (z < 420 or z > 440)"),
]

CORPUS_EXPECTED = {
    "intensity >= 0 and not classification == 200": lambda p: (p["intensity"] >= 0) & ~(p["classification"] == 200),
    "gps_time < 0": lambda p: p["gps_time"] < 0,
    "red > -1": lambda p: p["red"] > -1,
    "return_number in [1, 2] or z > 1e6": lambda p: in_list(p["return_number"], [1, 2]) | (p["z"] > 1e6),
    CORPUS_CASES[4][1]: lambda p: (p["classification"] == 2) & (p["z"] > 450.5) | in_list(p["intensity"],
                                                                                          range(1, 11)),
    CORPUS_CASES[5][1]: lambda p: (p["return_number"] > 1) & (p["gps_time"] < 83177420.6) | (p["scan_angle"] < 2839),
    CORPUS_CASES[6][1]: lambda p: (p["Time"] > 247562) & (p["Intensity"] < 61) | (p["classification"] == 2),
    "not gps_time > 0": lambda p: ~(p["gps_time"] > 0),
    "gps_time in [1, 2]": lambda p: in_list(p["gps_time"], [1, 2]),
    CORPUS_CASES[9][1]: lambda p: (p["classification"] == 2) & (p["intensity"] > 20) & ~((p["z"] < 420) |
                                                                                          (p["z"] > 440)),
}


@pytest.mark.parametrize("source, where", CORPUS_CASES, ids=[f"{s}: {w}" for s, w in CORPUS_CASES])
def test_corpus_files_of_every_point_format_keep_the_records_of_the_kept_points(conformance, registry, tmp_path,
                                                                               source, where):
    local = tmp_path / Path(source).name
    local.write_bytes((conformance / source).read_bytes())
    results, path = filtered(tmp_path, registry, where, chunk_size=1000, source=local.name)
    original = laspy.read(local)
    mask = CORPUS_EXPECTED[where](attributes(local))
    written = laspy.read(path)
    assert written.header.point_format.id == original.header.point_format.id
    assert written.points.array.tobytes() == original.points.array[mask].tobytes()
    assert results[0].points_out == mask.sum()
    if len(original.points) > 1:
        assert 0 < mask.sum() < len(original.points)


# ---------------------------------------------------------------- the grammar


def c(name, op, value):
    return Compare(name, op, value)


PARSED = [
    ("a == 1 or b == 2 and c == 3", Or((c("a", "==", 1), And((c("b", "==", 2), c("c", "==", 3)))))),
    ("a == 1 and b == 2 or c == 3", Or((And((c("a", "==", 1), c("b", "==", 2))), c("c", "==", 3)))),
    ("(a == 1 or b == 2) and c == 3", And((Or((c("a", "==", 1), c("b", "==", 2))), c("c", "==", 3)))),
    ("a == 1 or b == 2 or c == 3", Or((c("a", "==", 1), c("b", "==", 2), c("c", "==", 3)))),
    ("not a == 1 and b == 2", And((Not(c("a", "==", 1)), c("b", "==", 2)))),
    ("not (a == 1 and b == 2)", Not(And((c("a", "==", 1), c("b", "==", 2))))),
    ("not not a == 1", Not(Not(c("a", "==", 1)))),
    ("not a in [1]", Not(Member("a", (1,)))),
    ("a not in [1, 2]", Member("a", (1, 2), True)),
    ("not a not in [1]", Not(Member("a", (1,), True))),
    ("((((a < 1))))", c("a", "<", 1)),
    ("((a < 1) or ((b > 2) and (c != 3)))", Or((c("a", "<", 1), And((c("b", ">", 2), c("c", "!=", 3)))))),
    ("a > -1.5e3", c("a", ">", -1500.0)),
    ("a > .5", c("a", ">", 0.5)),
    ("a > 5.", c("a", ">", 5.0)),
    ("a > 1E-2", c("a", ">", 0.01)),
    ("a > +7", c("a", ">", 7)),
    ("a > - 7", c("a", ">", -7)),
    ("a > 1_000", c("a", ">", 1000)),
    ("a > 0", c("a", ">", 0)),
    ("a > 0.0", c("a", ">", 0.0)),
    ("a == 18446744073709551615", c("a", "==", 2 ** 64 - 1)),
    ("-1.5 < a", c("a", ">", -1.5)),
    ("2 <= a", c("a", ">=", 2)),
    ("2 == a", c("a", "==", 2)),
    ("2 != a", c("a", "!=", 2)),
    ("2 > a", c("a", "<", 2)),
    ("2 >= a", c("a", "<=", 2)),
    ("a in []", Member("a", ())),
    ("a in [1, -2.5, 3,]", Member("a", (1, -2.5, 3))),
    ("_a1 >= 3", c("_a1", ">=", 3)),
    ("a>1and b<2", None),  # `1and` is not a number
    ("a>1 and b<2", And((c("a", ">", 1), c("b", "<", 2)))),
    ("  a\t>\n1  ", c("a", ">", 1)),
    ("a==1 or(b==2)", Or((c("a", "==", 1), c("b", "==", 2)))),
    ("a in[1,2]and b==1", And((Member("a", (1, 2)), c("b", "==", 1)))),
    ("inside == 1 and order > 2 and notes < 1", And((c("inside", "==", 1), c("order", ">", 2), c("notes", "<", 1)))),
]


@pytest.mark.parametrize("text, tree", PARSED, ids=[case[0] for case in PARSED])
def test_the_parser_reads_precedence_negation_parentheses_numbers_and_spaces(text, tree):
    if tree is None:
        with pytest.raises(ExpressionError):
            parse(text)
    else:
        assert parse(text) == tree
        if isinstance(tree, Compare):
            assert type(parse(text).value) is type(tree.value)  # 5. is a float, 5 an int


SYNTAX_ERRORS = [
    ("classification != and z > 1", "expected a number or a name at column 19: classification != and z > 1"),
    ("z >", "expected a number or a name at column 4 (the end): z >"),
    ("", "expected a condition, such as classification == 2 (it is empty)"),
    ("z > 1 and", "expected a condition at column 10 (the end): z > 1 and"),
    ("not", "expected a condition at column 4 (the end): not"),
    ("z > 1 AND x < 2", "expected 'and', 'or' or the end (keywords are lowercase: and) at column 7: z > 1 AND x < 2"),
    ("1 < x < 2", "comparisons do not chain (join them with and) at column 7: 1 < x < 2"),
    ("x > y", "expected a number (not a second name) at column 5: x > y"),
    ("1 < 2", "expected a name (not a second number) at column 5: 1 < 2"),
    ("1 < -2", "expected a name (not a second number) at column 5: 1 < -2"),
    ("z = 1", "unexpected character '=' (write == to compare) at column 3: z = 1"),
    ("z > 1 && x < 2", "unexpected character '&' (write and) at column 7: z > 1 && x < 2"),
    ("z > $1", "unexpected character '$' at column 5: z > $1"),
    ("(z > 1", "expected 'and', 'or' or ')' at column 7 (the end): (z > 1"),
    ("(z > 1 x", "expected 'and', 'or' or ')' at column 8: (z > 1 x"),
    ("z > 1)", "unexpected ')' at column 6: z > 1)"),
    ("z in 3", "expected '[' (a list of numbers) at column 6: z in 3"),
    ("z in [1 2]", "expected ',' or ']' at column 9: z in [1 2]"),
    ("z in [1, a]", "expected a number at column 10: z in [1, a]"),
    ("z in [1,", "expected a number at column 9 (the end): z in [1,"),
    ("z 5", "expected a comparison (==, !=, <, <=, >, >=, in or not in) at column 3: z 5"),
    ("5 in [1]", "expected a comparison (==, !=, <, <=, >, >=) at column 3: 5 in [1]"),
    ("z > 1.2.3", "malformed number '1.2.3' at column 5: z > 1.2.3"),
    ("z > 12abc", "malformed number '12abc' at column 5: z > 12abc"),
    ("z > 1e", "malformed number '1e' at column 5: z > 1e"),
    ("z > 007", "malformed number '007' (leading zeros) at column 5: z > 007"),
    ("z > 1e999", "number out of range '1e999' at column 5: z > 1e999"),
    ("z > -", "expected a number at column 6 (the end): z > -"),
    ("z > 1\nand\tor", "expected a condition at column 11: z > 1 and or"),  # line breaks and tabs shown as spaces
    ("(" * 101 + "z > 1" + ")" * 101, f"nested more than 100 deep at column 101: {'(' * 101}z > 1{')' * 101}"),
]


@pytest.mark.parametrize("where, message", SYNTAX_ERRORS, ids=[case[0][:40] for case in SYNTAX_ERRORS])
def test_syntax_errors_name_the_problem_and_its_column(where, message):
    with pytest.raises(ExpressionError) as error:
        parse(where)
    assert str(error.value) == message


@pytest.mark.parametrize("where, message", [
    ("classification != and z > 1", "expected a number or a name at column 19: classification != and z > 1"),
    ("z > 1 AND x < 2", "expected 'and', 'or' or the end (keywords are lowercase: and) at column 7: z > 1 AND x < 2"),
    ("1 < z < 2", "comparisons do not chain (join them with and) at column 7: 1 < z < 2"),
    ("", "expected a condition, such as classification == 2 (it is empty)"),
])
def test_syntax_errors_are_config_errors_before_any_io(tmp_path, registry, where, message):
    with pytest.raises(ConfigError) as error:  # no in.las here: nothing is read
        filtered(tmp_path, registry, where)
    assert str(error.value) == f"{tmp_path / 'config.yaml'}:7: {LABEL} > where: {message}"


def test_a_where_that_is_not_text_is_a_config_error(tmp_path, registry):
    with pytest.raises(ConfigError) as error:
        run(tmp_path, registry, """
            version: 1
            stages:
              - {type: source.files, paths: [in.las]}
              - {type: transform.filter, where: 5}
              - {type: sink.las, path: out.las}
        """)
    assert str(error.value).endswith(f"{LABEL} > where: expected a string, got an integer 5")


# ---------------------------------------------------------------- attributes the item does not have


def test_an_unknown_attribute_lists_the_items_attributes_with_a_hint_before_any_point_is_read(survey, registry):
    with pytest.raises(StageError) as error:
        filtered(survey, registry, "z > 1 and clasification == 2")
    dimensions = laspy.read(survey / "in.las").point_format.dimension_names
    names = ", ".join(["x", "y", "z"] + [name for name in dimensions if name not in ("X", "Y", "Z")])
    assert str(error.value) == (f"{LABEL}: in: unknown attribute 'clasification' in `where`; the item has {names}; "
                                "did you mean 'classification'?")
    assert not (survey / "out").exists() or not any((survey / "out").iterdir())


def test_an_unknown_attribute_without_a_close_name_has_no_hint(tmp_path, registry):
    make_las(tmp_path / "in.las", [[500_000.0, 4_000_000.0, 10.0]], point_format=0)
    with pytest.raises(StageError) as error:
        filtered(tmp_path, registry, "red > 3")  # point format 0 has no colour
    assert str(error.value) == (
        f"{LABEL}: in: unknown attribute 'red' in `where`; the item has x, y, z, intensity, return_number, "
        "number_of_returns, scan_direction_flag, edge_of_flight_line, classification, synthetic, key_point, withheld, "
        "scan_angle_rank, user_data, point_source_id")


def test_an_array_attribute_is_refused_naming_it(conformance, registry, tmp_path):
    (tmp_path / "extrabytes.las").write_bytes((conformance / "las/extrabytes.las").read_bytes())
    with pytest.raises(StageError) as error:
        filtered(tmp_path, registry, "Colors > 3 or classification == 2", source="extrabytes.las")
    assert str(error.value) == (f"{LABEL}: extrabytes: attribute 'Colors' in `where` holds 3 values a point; "
                                "`where` compares attributes of one value")


class Info:
    """The stream info start() needs: the attributes, and with_step."""

    def __init__(self, dtype):
        self.dtype = np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8")] + dtype)

    def with_step(self, step):
        return step


class Item:
    name = "scan_01"


def test_an_attribute_that_is_not_a_number_is_refused_naming_it():
    transform = filtering.FilterTransform({"where": "z > 1 and raw == 3"}, LABEL)
    with pytest.raises(StageError) as error:
        transform.start(Item(), Info([("raw", "V4")]))
    assert str(error.value) == f"{LABEL}: scan_01: attribute 'raw' in `where` is not a number (its type is V4)"


def test_a_stage_built_without_the_config_check_still_refuses_bad_syntax():
    with pytest.raises(StageError) as error:
        filtering.FilterTransform({"where": "z >> 1"}, LABEL).start(Item(), Info([]))
    assert str(error.value) == f"{LABEL}: where: expected a number or a name at column 4: z >> 1"


# ---------------------------------------------------------------- exact comparisons, whatever the type

RNG = np.random.default_rng(5)
COLUMNS = {
    "u1": RNG.integers(0, 256, 400).astype("u1"),
    "i1": RNG.integers(-128, 128, 400).astype("i1"),
    "u2": RNG.integers(0, 65536, 400).astype("u2"),
    "i2": RNG.integers(-5, 5, 400).astype("i2"),
    "i4": RNG.integers(-2 ** 31, 2 ** 31, 400).astype("i4"),
    "u8": np.concatenate([RNG.integers(0, 2 ** 63, 396, dtype="u8") * np.uint64(2),
                          np.array([0, 2 ** 64 - 1, 2 ** 63, 2 ** 53 + 1], "u8")]),
    "i8": np.concatenate([RNG.integers(-2 ** 63, 2 ** 63 - 1, 396, dtype="i8"),
                          np.array([2 ** 53, 2 ** 53 + 1, -2 ** 63, 7], "i8")]),
    "f4": np.r_[RNG.normal(0, 1, 390), [0.1, np.float32(0.1), np.nan, np.inf, -np.inf, 0, -0.0, 3e38, 1e-45,
                                        2.5]].astype("f4"),
    "f8": np.r_[RNG.normal(0, 1, 390), [0.1, np.nan, np.inf, -np.inf, 0, -0.0, 2 ** 53, 2 ** 53 + 2, 1e308, 2.5]],
    "flag": RNG.integers(0, 2, 400).astype(bool),
    "big_i2": RNG.integers(-300, 300, 400).astype(">i2"),  # a big-endian PLY's types
    "big_f8": RNG.normal(0, 3, 400).astype(">f8"),
}
CONSTANTS = [0, 1, -1, 2.5, 7, -0.5, 0.1, 127, 128, -129, 255, 256, 65535.5, 2 ** 31, 2 ** 53, 2 ** 53 + 1,
             2 ** 63, 2 ** 64 - 1, 2 ** 64, -2 ** 63, 10 ** 30, -(10 ** 30), 3e38, 3.5e38, 1e-45, 1e308, -1e308]
OPERATORS = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
             ">=": operator.ge}


def chunk_of(columns):
    dtype = np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8")] + [(name, v.dtype) for name, v in columns.items()])
    array = np.zeros(len(next(iter(columns.values()))), dtype)
    for name, values in columns.items():
        array[name] = values
    return Chunk.of(array)


def evaluated(where, chunk):
    mask = compiled(parse(where), chunk.dtype)
    return np.full(len(chunk), mask) if isinstance(mask, bool) else mask(chunk)


@pytest.mark.parametrize("name", COLUMNS)
def test_comparisons_are_exact_whatever_the_type_as_python_compares_numbers(name):
    """Python compares an int with a float exactly: each value is compared here as a Python number (NaN: false,
    != true)."""
    chunk = chunk_of(COLUMNS)
    values = [v.item() for v in COLUMNS[name]]
    for constant in CONSTANTS:
        for op, compare in OPERATORS.items():
            expected = np.array([compare(int(v) if name == "flag" else v, constant) for v in values])
            assert np.array_equal(evaluated(f"{name} {op} {constant!r}", chunk), expected), (name, op, constant)
            mirrored = {"<": ">", ">": "<", "<=": ">=", ">=": "<="}.get(op, op)
            assert np.array_equal(evaluated(f"{constant!r} {mirrored} {name}", chunk), expected)


@pytest.mark.parametrize("name", COLUMNS)
@pytest.mark.parametrize("count", [0, 1, 3, 12])  # nothing, one ==, a few ==, a table or isin
def test_in_and_not_in_are_exact_whatever_the_type(name, count):
    chunk = chunk_of(COLUMNS)
    values = [v.item() for v in COLUMNS[name]]
    listed = [values[i] for i in range(0, 12 * count, 12)][:count]
    listed = [v for v in listed if v == v] + CONSTANTS[:count]  # not NaN: a number as written
    text = ", ".join(map(repr, (int(v) if isinstance(v, bool) else v for v in listed)))
    kept = np.array([(int(v) if name == "flag" else v) in listed for v in values])
    assert np.array_equal(evaluated(f"{name} in [{text}]", chunk), kept)
    assert np.array_equal(evaluated(f"{name} not in [{text}]", chunk), ~kept)


class CountingLayout:
    """A layout that decodes columns from a structured array, recording which."""

    def __init__(self):
        self.decoded = []

    def decode(self, records, name, kind):
        self.decoded.append(name)
        return records[name]


@pytest.mark.parametrize("where, decoded", [
    ("classification == 2 and z > 1", ["classification"]),
    ("classification == 300 and intensity > 2", []),  # decided without reading a value
    ("classification == 300 or intensity > 2", ["intensity"]),
    ("z > 1 or x < 2", []),  # x, y, z are always there
    ("not (intensity in [1, 2, 3] and classification not in [4, 5])", ["intensity", "classification"]),
])
def test_only_the_columns_the_expression_names_are_decoded(where, decoded):
    records = np.zeros(10, [("intensity", "u2"), ("classification", "u1"), ("gps_time", "f8")])
    records["classification"] = np.arange(10)
    layout = CountingLayout()
    info = Info([(n, records.dtype[n]) for n in records.dtype.names])
    chunk = Chunk(np.ones((3, 10)), info.dtype, records=records, layout=layout)
    _, function = filtering.FilterTransform({"where": where}, LABEL).start(Item(), info)
    list(function(iter([chunk])))
    assert layout.decoded == decoded


def test_there_is_no_eval_or_exec():
    """Nothing in the stage's module runs text as Python: no eval, exec, compile (re.compile is a regex),
    __import__ or literal_eval, and no way to them through builtins."""
    tree = ast.parse(Path(filtering.__file__).read_text())
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names} | {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not names & {"eval", "exec", "compile", "__import__", "literal_eval", "builtins", "__builtins__"}
    assert not attributes & {"eval", "exec", "literal_eval", "__import__"}
    assert not imported & {"ast", "builtins", "importlib", "code", "codeop"}
