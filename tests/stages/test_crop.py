"""transform.crop: a box or a polygon with holes, inside or outside; every kept point's record exact. Expected
points come from plain numpy comparisons (boxes) and from a per-point reference written here (polygons): the
winding number of each ring and an on-segment test, exact in rational arithmetic where floats cannot decide."""
import random
from fractions import Fraction

import laspy
import numpy as np
import pytest

from pipeline.errors import ConfigError
from stages.crop import Polygon, check_rings
from tests.conftest import make_las, survey_las, through

COUNT = 5000
X0, Y0 = 500_000, 4_000_000


@pytest.fixture
def survey(tmp_path):
    rng = np.random.default_rng(12)
    xyz = rng.uniform([X0, Y0, 10], [X0 + 100, Y0 + 100, 40], (COUNT, 3))
    survey_las(tmp_path / "in.las", xyz, rng)
    return tmp_path


def cropped(folder, registry, options, chunk_size=65536, **run_options):
    """Runs source -> transform.crop with `options` (YAML text for each) -> sink.las (see conftest.through)."""
    return through(folder, registry, "transform.crop", options, chunk_size, **run_options)


def assert_kept(folder, registry, options, mask, chunk_size):
    """The crop writes exactly the input's records that `mask` selects, byte for byte, in order."""
    results, path = cropped(folder, registry, options, chunk_size)
    original = laspy.read(folder / "in.las").points.array
    written = laspy.read(path)
    assert written.points.array.tobytes() == original[mask].tobytes()
    assert written.header.point_count == results[0].points_out == np.count_nonzero(mask)
    assert results[0].points_in == COUNT
    path.unlink()


def xyz_of(path):
    data = laspy.read(path)
    return np.asarray(data.x), np.asarray(data.y), np.asarray(data.z)


# an independent point-in-polygon: winding numbers and on-segment tests, one point at a time

def orientation(a, b, p):
    """The sign of the cross product (b - a) × (p - a): exact, in rationals when floats cannot tell."""
    value = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    if abs(value) > 1e-6:
        return 1 if value > 0 else -1
    a, b, p = ([Fraction(c) for c in v] for v in (a, b, p))
    value = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    return (value > 0) - (value < 0)


def winding(ring, p):
    number = 0
    for a, b in zip(ring, ring[1:] + ring[:1]):
        if a[1] <= p[1] < b[1] and orientation(a, b, p) > 0:
            number += 1
        elif b[1] <= p[1] < a[1] and orientation(a, b, p) < 0:
            number -= 1
    return number


def on_ring(ring, p):
    return any(orientation(a, b, p) == 0 and min(a[0], b[0]) <= p[0] <= max(a[0], b[0])
               and min(a[1], b[1]) <= p[1] <= max(a[1], b[1]) for a, b in zip(ring, ring[1:] + ring[:1]))


def reference_inside(rings, xs, ys):
    """Inside or on the boundary: on any ring, or inside the outer ring and inside no hole."""
    rings = [[(float(x), float(y)) for x, y in ring] for ring in rings]
    return np.array([any(on_ring(ring, p) for ring in rings)
                     or (winding(rings[0], p) != 0 and all(winding(hole, p) == 0 for hole in rings[1:]))
                     for p in zip(xs.tolist(), ys.tolist())])


def absolute(ring):
    return [(X0 + x, Y0 + y) for x, y in ring]


def as_list(ring):
    return "[" + ", ".join(f"[{x!r}, {y!r}]" for x, y in ring) + "]"


def as_wkt(*rings):
    return '"POLYGON (' + ", ".join("(" + ", ".join(f"{x!r} {y!r}" for x, y in ring + ring[:1]) + ")"
                                    for ring in rings) + ')"'


# half-millimetre coordinates: the survey's points are on a millimetre grid, so none lies on an edge
L_SHAPE = absolute([(10.0005, 10.0005), (90.0005, 10.0005), (90.0005, 40.0005), (40.0005, 40.0005),
                    (40.0005, 90.0005), (10.0005, 90.0005)])
OUTER = absolute([(5.0005, 5.0005), (95.0005, 5.0005), (95.0005, 60.0005), (60.0005, 95.0005), (5.0005, 95.0005)])
HOLE = absolute([(30.0005, 30.0005), (70.0005, 30.0005), (50.0005, 70.0005)])


@pytest.mark.parametrize("chunk_size", [64, 65536])
@pytest.mark.parametrize("case", ["2d", "3d", "2d outside", "3d outside"])
def test_bounds_keep_the_points_inside_or_outside_with_every_record_exact(survey, registry, case, chunk_size):
    x, y, z = xyz_of(survey / "in.las")
    lows, highs = [X0 + 20.0005, Y0 + 30.0005, 20.0005], [X0 + 70.0005, Y0 + 55.0005, 30.0005]
    mask = (x >= lows[0]) & (x <= highs[0]) & (y >= lows[1]) & (y <= highs[1])
    if case.startswith("3d"):
        mask &= (z >= lows[2]) & (z <= highs[2])
    else:
        lows, highs = lows[:2], highs[:2]
    options = {"bounds": f"[{lows!r}, {highs!r}]"}
    if case.endswith("outside"):
        options["outside"] = "true"
        mask = ~mask
    assert 100 < np.count_nonzero(mask) < COUNT - 100
    assert_kept(survey, registry, options, mask, chunk_size)


@pytest.mark.parametrize("chunk_size", [64, 65536])
@pytest.mark.parametrize("case", ["L shape", "L shape as WKT", "L shape, outside", "hole", "hole, outside"])
def test_polygons_keep_what_an_independent_test_finds_inside(survey, registry, case, chunk_size):
    x, y, _ = xyz_of(survey / "in.las")
    rings = [L_SHAPE] if case.startswith("L shape") else [OUTER, HOLE]
    mask = reference_inside(rings, x, y)
    if case == "L shape":
        options = {"polygon": as_list(L_SHAPE + L_SHAPE[:1])}  # with its closing vertex
    else:
        options = {"polygon": as_wkt(*rings)}
    if case.endswith("outside"):
        options["outside"] = "true"
        mask = ~mask
    assert 100 < np.count_nonzero(mask) < COUNT - 100
    assert_kept(survey, registry, options, mask, chunk_size)


@pytest.fixture
def on_the_boundary(tmp_path):
    """Points on the edges and vertices of a pentagon with a hole (two sloped edges), and just off them: a
    scale of 1/8 stores these coordinates exactly."""
    outer = [(0, 0), (8, 0), (8, 4), (4, 8), (0, 4)]
    hole = [(2, 2), (5, 2), (5, 4), (2, 4)]
    points = {
        "on a vertex": [(0, 0), (8, 0), (8, 4), (4, 8), (0, 4), (2, 2), (5, 4)],
        "on an edge": [(3, 0), (8, 1.5), (6, 6), (2, 6), (0, 0.125), (3.5, 2), (5, 3), (2.125, 4), (2, 3.875)],
        "inside": [(1, 1), (7.875, 0.125), (5.875, 5.875), (1, 4.875), (3.5, 1.875), (5.125, 3)],
        "outside": [(-0.125, 0), (8, -0.125), (8.125, 4), (6.125, 6), (2, 6.125), (4, 8.125), (3, 3), (4.875, 3.875)],
    }
    xy = np.array([p for group in points.values() for p in group], dtype=np.float64)
    xyz = np.column_stack([xy[:, 0] + X0, xy[:, 1] + Y0, np.arange(len(xy), dtype=np.float64)])
    make_las(tmp_path / "in.las", xyz, scale=0.125, point_format=3, gps_time=np.arange(len(xy)) * 1.5)
    data = laspy.read(tmp_path / "in.las")
    assert np.array_equal(data.x, xyz[:, 0]) and np.array_equal(data.y, xyz[:, 1])  # stored exactly
    labels = [label for label, group in points.items() for _ in group]
    return tmp_path, absolute(outer), absolute(hole), np.array(labels)


@pytest.mark.parametrize("outside", [False, True])
def test_points_on_an_edge_or_a_vertex_are_inside(on_the_boundary, registry, outside):
    folder, outer, hole, labels = on_the_boundary
    expected = labels != "outside"
    options = {"polygon": as_wkt(outer, hole), "outside": str(outside).lower()}
    _, path = cropped(folder, registry, options, chunk_size=4)
    original = laspy.read(folder / "in.las").points.array
    kept = ~expected if outside else expected
    assert laspy.read(path).points.array.tobytes() == original[kept].tobytes()
    assert np.array_equal(reference_inside([outer, hole], *xyz_of(folder / "in.las")[:2]), expected)


def test_points_on_a_face_of_the_box_are_inside(on_the_boundary, registry):
    folder = on_the_boundary[0]
    _, path = cropped(folder, registry, {"bounds": f"[[{X0}, {Y0}, 0], [{X0 + 4}, {Y0 + 4}, 10]]"})
    x, y, z = xyz_of(folder / "in.las")
    kept = laspy.read(path)
    on_a_face = (x == X0) | (x == X0 + 4) | (y == Y0) | (y == Y0 + 4) | (z == 0) | (z == 10)
    assert np.count_nonzero(on_a_face & (x >= X0) & (x <= X0 + 4) & (y >= Y0) & (y <= Y0 + 4)) >= 5
    mask = (x >= X0) & (x <= X0 + 4) & (y >= Y0) & (y <= Y0 + 4) & (z >= 0) & (z <= 10)
    assert kept.points.array.tobytes() == laspy.read(folder / "in.las").points.array[mask].tobytes()


def test_a_crop_that_keeps_nothing_writes_an_empty_las(survey, registry):
    results, path = cropped(survey, registry, {"bounds": f"[[{X0 + 200}, {Y0}], [{X0 + 300}, {Y0 + 100}]]"},
                            chunk_size=1000)
    written = laspy.read(path)
    assert written.header.point_count == 0 == len(written.points) == results[0].points_out
    assert written.header.point_format.id == 3
    assert written.points.array.dtype == laspy.read(survey / "in.las").points.array.dtype


def test_a_crop_after_a_matrix_uses_the_moved_coordinates(survey, registry):
    before = """          - type: transform.matrix
            matrix: [[1, 0, 0, 1000], [0, 1, 0, -500], [0, 0, 1, 0], [0, 0, 0, 1]]
"""
    lows, highs = (X0 + 1020.0005, Y0 - 470.0005), (X0 + 1070.0005, Y0 - 445.0005)  # nowhere near the input
    options = {"bounds": f"[{list(lows)!r}, {list(highs)!r}]"}
    _, path = cropped(survey, registry, options, chunk_size=300, before=before)
    original = laspy.read(survey / "in.las")
    x, y = np.asarray(original.x) + 1000, np.asarray(original.y) - 500
    mask = (x >= lows[0]) & (x <= highs[0]) & (y >= lows[1]) & (y <= highs[1])
    assert np.count_nonzero(mask) > 100
    written = laspy.read(path)
    assert np.array_equal(written.gps_time, original.gps_time[mask])
    assert np.array_equal(written.intensity, original.intensity[mask])
    assert np.allclose(written.x, x[mask], rtol=0, atol=1e-6)
    assert np.allclose(written.y, y[mask], rtol=0, atol=1e-6)


def test_chunks_without_records_keep_every_column(registry):
    """Chunks of columns (PLY, text and E57 sources) lose the same points from every column, 2-d ones too."""
    from pipeline.chunk import Chunk
    from pipeline.model import StreamInfo
    rng = np.random.default_rng(5)
    points = np.zeros(1000, dtype=[("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2"), ("normal", "f4", (3,))])
    points["x"], points["y"] = rng.uniform(X0, X0 + 10, 1000), rng.uniform(Y0, Y0 + 10, 1000)
    points["intensity"] = np.arange(1000)
    points["normal"] = rng.uniform(-1, 1, (1000, 3))
    crop = registry.get("transform.crop")({"bounds": None, "polygon": as_wkt(absolute([(1, 1), (9, 1), (5, 9)]))[1:-1],
                                           "outside": False}, "crop")
    info, function = crop.start(None, StreamInfo(points.dtype, "test"))
    chunks = list(function(Chunk.of(part) for part in np.array_split(points, 7)))
    kept = Chunk.joined(chunks, points.dtype).structured()
    mask = reference_inside([absolute([(1, 1), (9, 1), (5, 9)])], points["x"], points["y"])
    assert 100 < np.count_nonzero(mask) < 900
    assert kept.tobytes() == points[mask].tobytes()
    assert info.applied[-1]["stage"] == "crop" and info.applied[-1]["outside"] is False
    assert info.applied[-1]["polygon"] == "POLYGON ((500001 4000001, 500009 4000001, 500005 4000009, 500001 4000001))"


def test_the_report_records_the_crop(survey, registry):
    results, _ = cropped(survey, registry, {"bounds": f"[[{X0}, {Y0}], [{X0 + 50}, {Y0 + 50.5}]]", "outside": "true"})
    assert results[0].applied[-1] == {"stage": results[0].applied[-1]["stage"], "outside": True,
                                      "bounds": [[X0, Y0], [X0 + 50, Y0 + 50.5]]}
    assert "transform.crop" in results[0].applied[-1]["stage"]


def random_star(rng, vertices):
    """A simple polygon: vertices around a centre at increasing angles, on a quarter-metre grid."""
    import math
    angles = sorted(rng.uniform(0, 2 * math.pi) for _ in range(vertices))
    return [(X0 + round(rng.uniform(4, 10) * math.cos(t) * 4) / 4, Y0 + round(rng.uniform(4, 10) * math.sin(t) * 4) / 4)
            for t in angles]


def test_every_way_of_testing_agrees_with_the_reference_on_grid_points():
    """Points on a quarter-metre grid land on vertices, edges and vertices' lines often: the slabs, the test
    against every edge, and grids of several sizes must all agree with the reference."""
    rng = random.Random(3)
    grid = np.arange(-11, 11.01, 0.25)
    x, y = (values.ravel() for values in np.meshgrid(X0 + grid, Y0 + grid))
    tested = 0
    while tested < 12:
        rings = [random_star(rng, rng.randint(3, 24))]
        if tested % 2:
            rings.append([(X0 + a, Y0 + b) for a, b in [(-1, -1), (1.5, -1), (1, 1.25), (0, 0.5), (-1, 1)]])
        try:
            checked = check_rings(rings)
        except ValueError:  # two star vertices on one ray, or the hole not inside: not simple
            continue
        expected = reference_inside([ring.tolist() for ring in checked], x, y)
        for slabs, cells in [(True, 256), (True, 1), (True, 7), (False, 3)]:
            polygon = Polygon(checked, max_slab_edges=1 << 21 if slabs else 0, grid=cells)
            assert np.array_equal(polygon.contains(x, y), expected), (tested, slabs, cells)
        tested += 1


BOWTIE = "[[0, 0], [2, 2], [2, 0], [0, 2]]"


@pytest.mark.parametrize("options, message", [
    ({"bounds": "[[0, 0, 0], [1, 1]]"}, "bounds: expected [[xmin, ymin], [xmax, ymax]] or [[xmin, ymin, zmin], "
                                        "[xmax, ymax, zmax]], got [[0, 0, 0], [1, 1]]"),
    ({"bounds": "[0, 0, 1, 1]"}, "bounds: expected [[xmin, ymin], [xmax, ymax]] or [[xmin, ymin, zmin], "
                                 "[xmax, ymax, zmax]], got [0, 0, 1, 1]"),
    ({"bounds": "[[0, 5], [1, 1]]"}, "bounds: ymin (5) is greater than ymax (1)"),
    ({"bounds": "[[0, 0, 2.5], [1, 1, 2]]"}, "bounds: zmin (2.5) is greater than zmax (2)"),
    ({"bounds": "[[0, 0], [.inf, 1]]"}, "bounds: xmax is not a finite number: inf"),
    ({"bounds": "[[0, .nan], [1, 1]]"}, "bounds: ymin is not a finite number: nan"),
    ({"bounds": "[[0, 0], [a, 1]]"}, "bounds: xmax is not a number: 'a'"),
    ({"polygon": '"POINT (1 2)"'}, "polygon: expected WKT POLYGON ((x y, ...), ...), got 'POINT (1 2)'"),
    ({"polygon": '"POLYGON ((0 0, 1 0, 1 1)"'},
     "polygon: expected WKT POLYGON ((x y, ...), ...), got 'POLYGON ((0 0, 1 0, 1 1)'"),
    ({"polygon": '"POLYGON ((0 0, 1 0, 1))"'}, "polygon: ring 0, vertex 2: expected two numbers 'x y', got '1'"),
    ({"polygon": '"POLYGON ((0 0, 4 0, 4 4), (1 1, 2 1, 2 2 2))"'},
     "polygon: ring 1, vertex 2: expected two numbers 'x y', got '2 2 2'"),
    ({"polygon": '"POLYGON ((0 0, 1 0, 1e999 1))"'}, "polygon: ring 0, vertex 2 is not finite: (inf, 1.0)"),
    ({"polygon": "[[0, 0], [1, 0], [.nan, 1]]"}, "polygon: ring 0, vertex 2 is not finite: (nan, 1.0)"),
    ({"polygon": "[[0, 0], [1, 0]]"}, "polygon: ring 0 has 2 distinct vertices, at least 3 are needed"),
    ({"polygon": "[[0, 0], [1, 0], [1, 0], [0, 0]]"}, "polygon: ring 0 has 2 distinct vertices, at least 3 are needed"),
    ({"polygon": "[[0, 0], [1, 0, 0], [1, 1]]"}, "polygon: ring 0, vertex 1: expected [x, y] (two numbers), got "
                                                 "[1, 0, 0]"),
    ({"polygon": "[[[0, 0], [4, 0], [4, 4]], [[1, 1], [2, 1], [2, 2]]]"},
     "polygon: ring 0, vertex 0: expected [x, y], got a list of lists (a polygon with holes is given as WKT: "
     "POLYGON ((outer ring), (hole), ...))"),
    ({"polygon": "5"}, "polygon: expected a list of [x, y] or a WKT POLYGON ((x y, ...), ...) string, got 5"),
    ({"polygon": BOWTIE}, "polygon: ring 0 crosses itself: edge 0-1 and edge 2-3 meet"),
    ({"polygon": '"POLYGON ((0 0, 4 0, 4 4, 2 -1, 0 4, 0 0))"'},
     "polygon: ring 0 crosses itself: edge 0-1 and edge 2-3 meet"),
    ({"polygon": "[[0, 0], [4, 0], [4, 4], [0, 4], [2, 4], [2, 6]]"},  # the fourth vertex lies on edge 2-3
     "polygon: ring 0 crosses itself: edge 2-3 and edge 3-4 overlap"),
    ({"polygon": "[[0, 0], [4, 0], [2, 2], [4, 4], [0, 4], [2, 2]]"},  # touches itself at a vertex
     "polygon: ring 0 crosses itself: edge 1-2 and edge 4-5 meet"),
    ({"polygon": "[[0, 0], [1, 0], [2, 0], [3, 0]]"}, "polygon: ring 0 crosses itself: edge 0-1 and edge 3-0 overlap"),
    ({"polygon": '"POLYGON ((0 0, 10 0, 10 10, 0 10), (20 20, 21 20, 21 21))"'},
     "polygon: ring 1 (a hole) is not inside ring 0"),
    ({"polygon": '"POLYGON ((0 0, 10 0, 10 10, 0 10), (5 5, 15 5, 15 6))"'},
     "polygon: ring 1 (a hole) touches or crosses ring 0: its edge 0-1 meets edge 1-2 of ring 0"),
    ({"polygon": '"POLYGON ((0 0, 10 0, 10 10, 0 10), (0 5, 5 4, 5 6))"'},  # a hole's vertex on the outer ring
     "polygon: ring 1 (a hole) touches or crosses ring 0: its edge 0-1 meets edge 3-0 of ring 0"),
    ({"polygon": '"POLYGON ((0 0, 10 0, 10 10, 0 10), (1 1, 9 1, 9 9, 1 9), (4 4, 5 4, 5 5))"'},
     "polygon: ring 2 (a hole) is inside ring 1 (a hole): holes must not overlap"),
    ({"polygon": '"POLYGON ((0 0, 10 0, 10 10, 0 10), (1 1, 5 1, 5 5), (2 1, 6 1, 6 5))"'},
     "polygon: ring 2 (a hole) touches or crosses ring 1 (a hole): its edge 0-1 meets edge 0-1 of ring 1"),
    ({"bounds": "[[0, 0], [1, 1]]", "polygon": BOWTIE}, "polygon: give either `bounds` or `polygon`, not both"),
    ({"outside": "true"}, "bounds: give `bounds` or `polygon`"),
])
def test_bad_options_are_refused_in_one_line_before_any_io(tmp_path, registry, options, message):
    with pytest.raises(ConfigError) as error:
        cropped(tmp_path, registry, options)  # there is no in.las: nothing is read
    assert str(error.value).endswith(f"stages[1] (transform.crop) > {message}")
    assert "\n" not in str(error.value)
