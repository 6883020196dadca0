"""The corrections: one 4×4 per item that a global adjustment of the pairwise ICP results would apply.

Some items are held fixed (their correction is the identity): the largest group of items joined by pairs that
agree (ties: the group of the earliest item), and the items the user names in `fixed`. Every other item is
moved so that, for every measured pair (a, b) whose ICP brings b onto a by T, C_a · T · C_b⁻¹ is as near the
identity as least squares weighted by the pair's overlap (its points in it) allow: Gauss-Newton on the
corrections, each step solving for small motions (a rotation vector and a translation per item) over the
graph of pairs, until the steps are below a micrometre. A group of items joined to no fixed item by any
measured pair has its earliest item held fixed too, and the reason is recorded. Works in the site frame of
pairs.py (rotations about a point near the scans).
"""
import numpy as np

from .pairs import AGREES, rotation_degrees

STEPS = 20
SMALLEST_STEP = 1e-9  # metres, and radians


def groups(count, joined):
    """The connected groups of items 0..count-1 under the pairs `joined`, each a sorted list, in order of their
    earliest item."""
    parent = list(range(count))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in joined:
        parent[root(a)] = root(b)
    found = {}
    for i in range(count):
        found.setdefault(root(i), []).append(i)
    return sorted(found.values(), key=lambda members: members[0])


def held_fixed(names, pairs, pinned):
    """{item: why it is held fixed}: the largest group of agreeing items (only when some pair agrees) and the
    items named in `pinned`."""
    why = {}
    agreeing = [(p["a"], p["b"]) for p in pairs if p["verdict"] == AGREES]
    if agreeing:
        largest = max(groups(len(names), agreeing), key=len)  # max keeps the first of equal sizes
        why.update({i: "in the largest group of items whose pairs agree" for i in largest})
    for i, name in enumerate(names):
        if name in pinned:
            why[i] = "named in fixed"
    return why


def skew(v):
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def exp_motion(step):
    """The 4×4 of a small motion (rotation vector, translation)."""
    omega, move = step[:3], step[3:]
    angle = np.linalg.norm(omega)
    matrix = np.eye(4)
    if angle > 0:
        k = skew(omega / angle)
        matrix[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    matrix[:3, 3] = move
    return matrix


def log_motion(matrix):
    """The rotation vector and translation of a 4×4 near the identity."""
    rotation = matrix[:3, :3]
    angle = np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1.0, 1.0))
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    omega = axis * (0.5 if angle < 1e-12 else angle / (2 * np.sin(angle)))
    return np.concatenate([omega, matrix[:3, 3]])


def adjust(names, pairs, pinned=()):
    """The corrections (site frame) of every item and why each item is held fixed, if it is.

    `pairs`: dicts with item indexes "a" and "b", "verdict", and for the pairs measured "matrix" (the ICP 4×4
    bringing b onto a) and "weight" (the points of their overlap: a small overlap fixes ICP less well).
    Returns ([4×4 per item], {item: reason held fixed})."""
    count = len(names)
    measured = [p for p in pairs if p.get("matrix") is not None]
    why = held_fixed(names, pairs, set(pinned))
    for members in groups(count, [(p["a"], p["b"]) for p in measured]):
        if not any(i in why for i in members):
            why[members[0]] = ("overlaps no other item" if len(members) == 1
                               else "the earliest of a group that overlaps no item held fixed")
    free = [i for i in range(count) if i not in why]
    column = {item: n for n, item in enumerate(free)}
    corrections = [np.eye(4) for _ in range(count)]
    used = [p for p in measured if p["a"] in column or p["b"] in column]
    for _ in range(STEPS if free and used else 0):
        rows, wanted = np.zeros((len(used), len(free))), np.zeros((len(used), 6))
        for row, p in enumerate(used):
            a, b = p["a"], p["b"]
            # the step: exp(d_a)·C_a·T·C_b⁻¹·exp(-d_b) = I, to first order d_b - d_a = log(C_a·T·C_b⁻¹)
            weight = np.sqrt(p.get("weight", 1.0))
            wanted[row] = weight * log_motion(corrections[a] @ p["matrix"] @ np.linalg.inv(corrections[b]))
            if b in column:
                rows[row, column[b]] = weight
            if a in column:
                rows[row, column[a]] = -weight
        steps = np.linalg.lstsq(rows, wanted, rcond=None)[0]
        for item, step in zip(free, steps):
            corrections[item] = exp_motion(step) @ corrections[item]
        if np.abs(steps).max() < SMALLEST_STEP:
            break
    return corrections, why


def described(matrix, centre):
    """What the report says of a correction: how far it moves the item's centre, and by what angle it turns."""
    moved = matrix[:3, :3] @ centre + matrix[:3, 3] - centre
    return {"translation": moved.tolist(), "rotation_degrees": rotation_degrees(matrix)}
