"""The corrections file: per item, the 4×4 that sink.overlap's global adjustment would apply, in the frame of the
points the sink received, which transform.align's `corrections` option reads back and applies after alignment.

    {"about": "...", "items": [{"id": "scan_03", "name": "scan_03", "sub": "7103", "held_fixed": null,
                                 "matrix": [[r00, r01, r02, tx], [r10, ...], [...], [0, 0, 0, 1]], ...}, ...]}

`matrix` is given as rows (each inner list is a row; translation in the last column), so the file never
leaves its convention to be guessed. Entries are matched to items by `sub`, the Cupix sub id; an entry without
one (an item that is not a Cupix sub) cannot be applied by transform.align.
"""
import json

from pipeline.errors import OptionError

ABOUT = ("Corrections from sink.overlap: per item, the 4x4 (rows; translation in the last column) that brings it "
         "onto the items held fixed, in the frame of the points the sink received. Review them, then apply them "
         "with transform.align's `corrections` option in a second run.")
ORTHONORMAL = 1e-6


def document(entries, unresolved=()):
    """The file's content; `unresolved` names the pairs that disagree between two items held fixed."""
    return {"about": ABOUT, "items": entries, "unresolved": list(unresolved)}


def read(path, option="corrections"):
    """{sub id: 4×4 float64} from a corrections file; anything else is an OptionError naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except OSError as error:
        raise OptionError(f"cannot read {path}: {error.strerror or error}", option) from error
    except ValueError as error:
        raise OptionError(f"{path} is not JSON: {error}", option) from error
    entries = document.get("items") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise OptionError(f"{path}: expected a corrections file of sink.overlap, with a list of items", option)
    found = {}
    for number, entry in enumerate(entries):
        where = f"{path}: items[{number}]"
        if not isinstance(entry, dict) or "sub" not in entry or "matrix" not in entry:
            raise OptionError(f"{where}: expected a sub and a matrix", option)
        if entry["sub"] is not None:
            if str(entry["sub"]) in found:
                raise OptionError(f"{where}: sub {entry['sub']} has a correction already: one entry a sub", option)
            found[str(entry["sub"])] = checked_matrix(entry["matrix"], f"{where} (sub {entry['sub']})", option)
    return found


def checked_matrix(value, where, option):
    import numpy as np
    try:
        matrix = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        matrix = None
    if matrix is None or matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        raise OptionError(f"{where}: the matrix must be 4 rows of 4 finite numbers", option)
    if not np.array_equal(matrix[3], [0, 0, 0, 1]):
        raise OptionError(f"{where}: the last row of the matrix must be 0, 0, 0, 1 (rows, translation in the last "
                          "column)", option)
    rotation = matrix[:3, :3]
    if np.abs(rotation @ rotation.T - np.eye(3)).max() > ORTHONORMAL or np.linalg.det(rotation) < 0:
        raise OptionError(f"{where}: the matrix is not a rotation and a translation", option)
    return matrix
