"""4×4 matrix math as pure functions on float64 arrays, and `transform.matrix`."""
import logging
import math

from pipeline.errors import OptionError
from pipeline.model import Bounds
from pipeline.options import Option, anything, boolean, choice, is_number, path, shown, typed
from pipeline.stage import Transform, each

log = logging.getLogger(__name__)

LAYOUTS = ("row_major", "column_major")


def as_matrix(values, layout=None):
    """A 4×4 float64 matrix from 4 rows of 4 numbers, or from 16 numbers stored in `layout`.

    >>> as_matrix([[1, 0, 0, 10], [0, 1, 0, 20], [0, 0, 1, 0], [0, 0, 0, 1]])[:, 3]
    array([10., 20.,  0.,  1.])
    >>> as_matrix([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 10, 20, 0, 1], "column_major")[:, 3]
    array([10., 20.,  0.,  1.])
    >>> as_matrix([1, 2, 3])
    Traceback (most recent call last):
    ...
    ValueError: expected 16 numbers, got 3
    """
    import numpy as np
    if isinstance(values, np.ndarray):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"expected 4 rows of 4 numbers or 16 numbers, got {shown(values)}")
    nested = any(isinstance(v, (list, tuple)) for v in values)
    if nested:
        if len(values) != 4 or any(not isinstance(row, (list, tuple)) or len(row) != 4 for row in values):
            lengths = [len(row) if isinstance(row, (list, tuple)) else 1 for row in values]
            raise ValueError(f"expected 4 rows of 4 numbers, got rows of {lengths}")
        flat = [v for row in values for v in row]
    else:
        if len(values) != 16:
            raise ValueError(f"expected 16 numbers, got {len(values)}")
        if layout not in LAYOUTS:
            raise ValueError("16 numbers need a layout: row_major or column_major")
        flat = list(values)
    for index, value in enumerate(flat):
        if not is_number(value) or not math.isfinite(value):
            raise ValueError(f"element {index + 1} is not a finite number: {shown(value)}")
    matrix = np.array(flat, dtype=np.float64).reshape(4, 4)
    return matrix.T.copy() if not nested and layout == "column_major" else matrix


def check_affine(matrix):
    """Raises ValueError unless the last row is 0 0 0 1.

    >>> import numpy as np
    >>> check_affine(np.eye(4))
    >>> check_affine(np.ones((4, 4)))
    Traceback (most recent call last):
    ...
    ValueError: last row must be 0 0 0 1, got 1 1 1 1
    """
    import numpy as np
    last = matrix[3]
    if not np.array_equal(last, [0.0, 0.0, 0.0, 1.0]):
        raise ValueError("last row must be 0 0 0 1, got " + " ".join(f"{v:g}" for v in last))


def invert(matrix):
    """The inverse of an affine matrix; a singular one is an error.

    >>> invert(as_matrix([[2, 0, 0, 1], [0, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]))[0].tolist()
    [0.5, 0.0, 0.0, -0.5]
    """
    import numpy as np
    check_affine(matrix)
    if abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise ValueError("the matrix is singular and cannot be inverted")
    inverse = np.linalg.inv(matrix)
    inverse[3] = (0.0, 0.0, 0.0, 1.0)
    return inverse


def apply(matrix, xyz, centre=(0.0, 0.0, 0.0)):
    """Applies an affine matrix to x, y, z (the rows of a (3, n) array; a new one is returned), around
    `centre` to keep large coordinates precise: p' = M·(p - c) + M·c, with the 3×3 part on the small
    differences and M·c computed once. Each moved axis is ((r0·dx + r1·dy) + r2·dz) + M·c, one numpy
    call per term for all three axes at once.

    >>> import numpy as np
    >>> apply(as_matrix([[0, -1, 0, 10], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
    ...       np.array([[1.0], [0.0], [5.0]]), centre=(4e6, 0, 0))
    array([[10.],
           [ 1.],
           [ 5.]])
    """
    import numpy as np
    rotation = matrix[:3, :3]
    centre = np.asarray(centre, dtype=np.float64)
    moved_centre = rotation @ centre + matrix[:3, 3]
    differences = np.subtract(xyz, centre[:, None])
    moved = np.multiply(differences[0], rotation[:, 0:1])
    term = np.empty_like(moved)
    for column in (1, 2):
        moved += np.multiply(differences[column], rotation[:, column:column + 1], out=term)
    moved += moved_centre[:, None]
    return moved


def transform_bounds(matrix, bounds):
    """Bounds that contain the image of `bounds` (its eight corners moved)."""
    import numpy as np
    corners = np.array(bounds.corners(), dtype=np.float64)
    moved = corners @ matrix[:3, :3].T + matrix[:3, 3]
    return Bounds(tuple(moved.min(axis=0).tolist()), tuple(moved.max(axis=0).tolist()))


def apply_to_chunk(matrix, chunk, centre):
    """A new chunk with x, y, z moved; every other attribute shared, unchanged."""
    return chunk.moved(apply(matrix, chunk.xyz, centre))


def pick_centre(bounds, chunk):
    """A round point near the data, fixed per item so every chunk is moved the same way."""
    if bounds is not None:
        return tuple(float(round((lo + hi) / 2)) for lo, hi in zip(bounds.mins, bounds.maxs))
    if len(chunk):
        return tuple(float(round(chunk[axis][0])) for axis in ("x", "y", "z"))
    return (0.0, 0.0, 0.0)


def matrix_transform(matrix, label, info):
    """The stream info after `matrix` and the stream function that applies it (shared by transform stages)."""
    centre = []

    def function(chunk):
        if not centre:
            centre.append(pick_centre(info.bounds, chunk))
        return apply_to_chunk(matrix, chunk, centre[0])

    bounds = transform_bounds(matrix, info.bounds) if info.bounds is not None else None
    return info.with_step({"stage": label, "matrix": matrix.tolist()}, bounds=bounds), each(function)


def read_matrix_file(file_name, layout):
    """A matrix from a text file: 4 lines of 4 numbers (rows), or 16 numbers with a layout."""
    try:
        with open(file_name, encoding="utf-8") as handle:
            rows = [line.replace(",", " ").split() for line in handle if line.strip() and not line.startswith("#")]
    except OSError as error:
        raise ValueError(f"cannot read {file_name}: {error.strerror or error}") from error
    try:
        numbers = [[float(v) for v in row] for row in rows]
    except ValueError as error:
        raise ValueError(f"{file_name}: {error}") from error
    if len(numbers) == 4 and all(len(row) == 4 for row in numbers) and layout is None:
        return as_matrix(numbers)
    try:
        return as_matrix([v for row in numbers for v in row], layout)
    except ValueError as error:
        raise ValueError(f"{file_name}: {error}") from error


class MatrixTransform(Transform):
    """Applies a 4×4 affine matrix to x, y, z (float64, around the cloud's centre)."""

    moves_points = True

    options = (
        Option("matrix", anything("4 rows of 4 numbers, or 16 numbers"), "the matrix", default=None),
        Option("layout", choice(*LAYOUTS), "how 16 numbers are stored (required for 16 numbers)", default=None),
        Option("file", path(), "a text file of 16 numbers instead of `matrix`", default=None),
        Option("invert", boolean(), "apply the inverse", default=False),
    )

    @classmethod
    def check(cls, options):
        cls.matrix_of(options)

    @staticmethod
    def matrix_of(options):
        if (options["matrix"] is None) == (options["file"] is None):
            raise OptionError("give exactly one of `matrix` and `file`", "matrix")
        name = "matrix" if options["file"] is None else "file"
        nested = isinstance(options["matrix"], list) and any(isinstance(v, list) for v in options["matrix"])
        if nested and options["layout"] is not None:
            raise OptionError("a matrix of 4 rows is read as rows; `layout` is only for 16 numbers in a flat list",
                              "layout")
        try:
            if name == "matrix":
                matrix = as_matrix(typed(options["matrix"]), options["layout"])
            else:
                matrix = read_matrix_file(options["file"], options["layout"])
            check_affine(matrix)
            return invert(matrix) if options["invert"] else matrix
        except ValueError as error:
            raise OptionError(str(error), name) from None

    def __init__(self, options, label=""):
        super().__init__(options, label)
        self.matrix = self.matrix_of(self.options)

    def start(self, item, info, decision=None):
        return matrix_transform(self.matrix, self.label, info)
