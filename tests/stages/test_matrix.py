import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.chunk import Chunk
from pipeline.model import Bounds, StreamInfo
from stages.matrix import (apply, apply_to_chunk, as_matrix, check_affine, invert, matrix_transform,
                          read_matrix_file, transform_bounds)

SHIFT = [[1, 0, 0, 10], [0, 1, 0, 20], [0, 0, 1, 30], [0, 0, 0, 1]]


def rigid(yaw, pitch, roll, translation):
    cz, sz, cy, sy, cx, sx = (math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch),
                              math.cos(roll), math.sin(roll))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = translation
    return matrix


def test_nested_rows_are_rows():
    assert as_matrix(SHIFT)[:3, 3].tolist() == [10, 20, 30]


def test_flat_layouts_give_the_same_matrix():
    row_major = [v for row in SHIFT for v in row]
    column_major = [SHIFT[r][c] for c in range(4) for r in range(4)]
    assert np.array_equal(as_matrix(row_major, "row_major"), as_matrix(column_major, "column_major"))
    assert np.array_equal(as_matrix(row_major, "row_major"), np.array(SHIFT, dtype=float))


@pytest.mark.parametrize("values, layout, message", [
    (list(range(15)), "row_major", "expected 16 numbers, got 15"),
    (list(range(16)), None, "16 numbers need a layout: row_major or column_major"),
    ([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]], None, "expected 4 rows of 4 numbers, got rows of [3, 3, 3, 3]"),
    ([[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], None,
     "element 4 is not a finite number: nan"),
    ([[1, 0, 0, "a"], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], None, "element 4 is not a finite number: 'a'"),
    ([[True, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], None, "element 1 is not a finite number: True"),
    ("eye", None, "expected 4 rows of 4 numbers or 16 numbers, got 'eye'"),
])
def test_bad_matrices(values, layout, message):
    with pytest.raises(ValueError) as error:
        as_matrix(values, layout)
    assert str(error.value) == message


def test_projective_matrix_is_rejected():
    with pytest.raises(ValueError, match=r"^last row must be 0 0 0 1, got 0 0 0.5 1$"):
        check_affine(as_matrix([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.5, 1]]))


def test_singular_matrix_cannot_be_inverted():
    with pytest.raises(ValueError, match="singular"):
        invert(as_matrix([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))


def test_matrix_file_rows_and_flat(tmp_path):
    rows = tmp_path / "rows.txt"
    rows.write_text("# site grid\n1 0 0 10\n0 1 0 20\n0 0 1 30\n0 0 0 1\n")
    assert np.array_equal(read_matrix_file(rows, None), np.array(SHIFT, dtype=float))
    flat = tmp_path / "flat.txt"
    flat.write_text("1,0,0,0, 0,1,0,0, 0,0,1,0, 10,20,30,1\n")
    assert np.array_equal(read_matrix_file(flat, "column_major"), np.array(SHIFT, dtype=float))
    with pytest.raises(ValueError, match=r"flat.txt: 16 numbers need a layout"):
        read_matrix_file(flat, None)


def test_worked_example_rotation_and_translation():
    quarter_turn = as_matrix([[0, -1, 0, 100], [1, 0, 0, 200], [0, 0, 1, 5], [0, 0, 0, 1]])
    x, y, z = apply(quarter_turn, np.array([[1.0, 2.0], [0.0, 3.0], [0.0, 1.0]]))
    assert x.tolist() == [100.0, 97.0]
    assert y.tolist() == [201.0, 202.0]
    assert z.tolist() == [5.0, 6.0]


@settings(max_examples=60, deadline=None)
@given(st.floats(-math.pi, math.pi), st.floats(-math.pi, math.pi), st.floats(-math.pi, math.pi),
       st.tuples(*[st.floats(-1e6, 1e6)] * 3), st.integers(0, 2 ** 32 - 1))
def test_apply_then_inverse_returns_survey_coordinates(yaw, pitch, roll, translation, seed):
    rng = np.random.default_rng(seed)
    x = 500_000 + rng.uniform(-100, 100, 50)
    y = 4_000_000 + rng.uniform(-100, 100, 50)
    z = 50 + rng.uniform(-10, 10, 50)
    matrix = rigid(yaw, pitch, roll, translation)
    centre = (500_000.0, 4_000_000.0, 50.0)
    moved = apply(matrix, np.stack([x, y, z]), centre)
    back = apply(invert(matrix), moved, centre=tuple(np.round(moved.mean(axis=1))))
    for original, returned in zip((x, y, z), back):
        assert np.abs(original - returned).max() < 1e-7


def test_bounds_of_moved_points_lie_inside_moved_bounds():
    rng = np.random.default_rng(1)
    points = rng.uniform(-50, 50, (1000, 3))
    matrix = rigid(0.7, 0.2, -0.4, (300_000, 4_000_000, 50))
    bounds = Bounds(tuple(points.min(axis=0)), tuple(points.max(axis=0)))
    moved = apply(matrix, points.T).T
    box = transform_bounds(matrix, bounds)
    assert np.all(moved >= np.array(box.mins) - 1e-9) and np.all(moved <= np.array(box.maxs) + 1e-9)


def test_chunk_is_copied_and_other_fields_kept():
    array = np.zeros(2, [("x", "f8"), ("y", "f8"), ("z", "f8"), ("intensity", "u2")])
    array["x"] = [1, 2]
    array["intensity"] = [7, 9]
    chunk = Chunk.of(array)
    moved = apply_to_chunk(as_matrix(SHIFT), chunk, (0.0, 0.0, 0.0))
    assert chunk["x"].tolist() == [1, 2]  # the input is untouched
    assert moved["x"].tolist() == [11, 12] and moved["y"].tolist() == [20, 20]
    assert moved["intensity"].tolist() == [7, 9]


def test_matrix_transform_records_the_step_and_moves_bounds():
    info = StreamInfo(dtype=np.dtype([("x", "f8"), ("y", "f8"), ("z", "f8")]), source_format="las",
                      bounds=Bounds((0.0, 0.0, 0.0), (1.0, 2.0, 3.0)))
    after, _ = matrix_transform(as_matrix(SHIFT), "stages[1] (transform.matrix)", info)
    assert after.applied == ({"stage": "stages[1] (transform.matrix)", "matrix": np.array(SHIFT, float).tolist()},)
    assert after.moved and not info.moved
    assert after.bounds == Bounds((10.0, 20.0, 30.0), (11.0, 22.0, 33.0))
