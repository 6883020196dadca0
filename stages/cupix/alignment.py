"""Cupix alignment: which order Cupix stored each 16-number matrix in, the group × sub world matrix of every
sub, the check against its own wtm, and `transform.align`, which applies it."""
import logging
import math
from dataclasses import replace

from pipeline.errors import OptionError, StageError
from pipeline.options import Option, anything, choice, is_number, path, shown, typed
from pipeline.stage import Transform

from ..matrix import LAYOUTS, as_matrix, check_affine, matrix_transform
from ..overlap.corrections import read as read_corrections
from .listing import meta as prop

log = logging.getLogger(__name__)

# Cupix stores 16 numbers per matrix without saying in which order. An affine matrix has 0 0 0 1 as its
# last row: stored row-major that row is at indices 12-15, stored column-major it is at 3, 7, 11, 15.

ZERO = 1e-6  # also forgives float32 noise in the positions that must be 0 or 1
COMPOSES = ("group_sub", "sub_world", "group_world_sub")
MM, MILLIRADIAN = 0.001, 0.001


def detect_layout(values):
    """Which storage orders fit 16 numbers: 'row_major', 'column_major', 'either' (no translation) or
    'neither' (not affine in any order).

    >>> detect_layout([1, 0, 0, 5, 0, 1, 0, 6, 0, 0, 1, 7, 0, 0, 0, 1])
    'row_major'
    >>> detect_layout([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 5, 6, 7, 1])
    'column_major'
    >>> detect_layout([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1])
    'either'
    >>> detect_layout([1, 0, 0, 5, 0, 1, 0, 0, 0, 0, 1, 0, 5, 0, 0, 1])
    'neither'
    """
    a = [float(v) for v in values]
    last = abs(a[15] - 1) <= ZERO
    row = last and all(abs(a[i]) <= ZERO for i in (12, 13, 14))
    column = last and all(abs(a[i]) <= ZERO for i in (3, 7, 11))
    return "either" if row and column else "row_major" if row else "column_major" if column else "neither"


def cupix_matrix(values, layout):
    """A 4×4 matrix from Cupix's 16 numbers stored in `layout`, with the exact 0 0 0 1 last row."""
    matrix = as_matrix([float(v) for v in values], layout)
    matrix[3] = (0.0, 0.0, 0.0, 1.0)
    return matrix


def column_norms(matrix):
    """Lengths of the three columns of the 3×3 block: the scale a matrix carries.

    >>> import numpy as np
    >>> column_norms(np.diag([2.0, 3.0, 4.0, 1.0])).tolist()
    [2.0, 3.0, 4.0]
    """
    import numpy as np
    return np.linalg.norm(matrix[:3, :3], axis=0)


def rotation_angle(matrix):
    """The angle in radians of the rotation in a matrix's 3×3 block (its scale removed).

    >>> round(rotation_angle(as_matrix([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])), 6)
    1.570796
    """
    import numpy as np
    rotation = matrix[:3, :3] / column_norms(matrix)
    cosine = (np.trace(rotation) - 1) / 2
    return float(np.arccos(np.clip(cosine, -1.0, 1.0)))


def difference(a, b):
    """(translation difference in metres, rotation difference in radians) between two matrices."""
    import numpy as np
    shift = float(np.linalg.norm(a[:3, 3] - b[:3, 3]))
    relative = np.eye(4)
    relative[:3, :3] = (a[:3, :3] / column_norms(a)).T @ (b[:3, :3] / column_norms(b))
    return shift, rotation_angle(relative)


def scale_decision(mode, group, scale):
    """Whether the group's scale vector must be applied: (apply?, reason).

    >>> import numpy as np
    >>> scale_decision("auto", np.eye(4), [2.0, 2.0, 2.0])
    (True, 'applied: the group matrix carries no scale')
    >>> scale_decision("auto", np.diag([2.0, 2.0, 2.0, 1.0]), [2.0, 2.0, 2.0])
    (False, 'not applied: the group matrix already carries it')
    >>> scale_decision("auto", np.eye(4), [1.0, 1.0, 1.0])
    (False, 'not applied: the scale is 1')
    """
    import numpy as np
    if mode == "apply":
        return True, "applied: scale: apply"
    if mode == "ignore":
        return False, "not applied: scale: ignore"
    if np.allclose(scale, 1.0, atol=1e-9):
        return False, "not applied: the scale is 1"
    norms = column_norms(group)
    if np.allclose(norms, 1.0, atol=1e-6):
        return True, "applied: the group matrix carries no scale"
    if np.allclose(norms, scale, rtol=1e-6):
        return False, "not applied: the group matrix already carries it"
    return False, f"not applied: the group matrix carries another scale {norms.round(6).tolist()}"


def compose(mode, group_tm, group_wtm, sub_tm, sub_wtm, scale=None, world_scale=None):
    """The world matrix of a sub for a `compose` mode; the scales are diag() matrices to apply, or None.

    >>> g = as_matrix([[1, 0, 0, 100], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    >>> s = as_matrix([[0, -1, 0, 0], [1, 0, 0, 5], [0, 0, 1, 0], [0, 0, 0, 1]])
    >>> compose("group_sub", g, None, s, None)[:3, 3].tolist()
    [100.0, 5.0, 0.0]
    """
    import numpy as np
    if mode == "sub_world":
        return sub_wtm.copy()
    parent, factor = (group_tm, scale) if mode == "group_sub" else (group_wtm, world_scale)
    middle = np.diag([*factor, 1.0]) if factor is not None else np.eye(4)
    return parent @ middle @ sub_tm


def scale_vector(values, where):
    if values is None:
        return [1.0, 1.0, 1.0]
    if (not isinstance(values, (list, tuple)) or len(values) != 3
            or not all(is_number(v) and math.isfinite(v) and v > 0 for v in values)):
        raise ValueError(f"{where}: scale must be 3 positive finite numbers, got {shown(values)}")
    return [float(v) for v in values]


def sixteen(values, where):
    if (not isinstance(values, (list, tuple)) or len(values) != 16
            or not all(is_number(v) and math.isfinite(v) for v in values)):
        raise ValueError(f"{where} must be 16 finite numbers, got {shown(values)}")
    return [float(v) for v in values]


class LayoutChooser:
    """Decides the storage order of every matrix of a run, and says how it decided."""

    def __init__(self, option, all_values):
        self.option = option
        self.notes = []
        found = {detect_layout(v) for v in all_values}
        decisive = found & {"row_major", "column_major"}
        self.fallback = decisive.pop() if len(decisive) == 1 else None
        if option == "auto" and "either" in found and self.fallback is None:
            self.fallback = "row_major"
            reason = ("no matrix of this run has a translation" if not decisive
                      else "matrices of this run are stored in both orders")
            self.notes.append(f"layout: {reason}, so matrices without a translation are read as row_major")

    def choose(self, values, where):
        found = detect_layout(values)
        if found == "neither":
            raise ValueError(f"{where} is not an affine matrix in either storage order: {values}")
        if self.option != "auto":
            if found not in (self.option, "either"):
                raise ValueError(f"{where} does not fit layout {self.option} (it is stored {found})")
            return self.option, "given"
        if found == "either":
            return self.fallback, "from the other matrices of the run" if not self.notes else "default"
        return found, "detected"


def plan_alignment(entries, layout="auto", compose_mode="group_sub", scale_mode="auto", check_world="warn",
                   extra=None):
    """The world matrix of every sub, and a record of how it was found.

    `entries` are (sub attributes, group attributes) in the shape of the Cupix listing (`id`, `name`,
    `meta.prop.tm`, `wtm`, `scale`, `wscale`). Returns (records, notes); a record's `matrix` is the
    float64 4×4 to apply; problems of `check_world` are in `record["check_world"]["problem"]`.
    """
    def name(kind, attributes):
        return f"pointcloud {attributes.get('id')} ({kind})"

    needed = {"group_sub": (("group", "tm"), ("sub", "tm")), "sub_world": (("sub", "wtm"),),
              "group_world_sub": (("group", "wtm"), ("sub", "tm"))}[compose_mode]
    arrays, all_values = [], []
    for sub, group in entries:
        if group is None:
            raise ValueError(f"pointcloud {sub.get('id')}: its group {(sub.get('parent') or {}).get('id')} was not found")
        ids = f"sub {sub.get('id')}, group {group.get('id')}"
        values = {}
        for kind, key in (("group", "tm"), ("group", "wtm"), ("sub", "tm"), ("sub", "wtm")):
            attributes = group if kind == "group" else sub
            raw = prop(attributes).get(key)
            if (kind, key) in needed:
                values[kind, key] = sixteen(raw, f"{ids}: meta.prop.{key} of the {kind}")
            elif raw is not None:
                try:
                    values[kind, key] = sixteen(raw, "")
                except ValueError:
                    values[kind, key] = None  # not needed for this compose mode; reported if compared
        arrays.append(values)
        all_values += [v for v in values.values() if v is not None]
    chooser = LayoutChooser(layout, all_values)
    records = []
    for (sub, group), values in zip(entries, arrays):
        matrices, layouts = {}, {}
        for (kind, key), raw in values.items():
            if raw is None:
                continue
            where = f"{name(kind, group if kind == 'group' else sub)} meta.prop.{key}"
            try:
                chosen, how = chooser.choose(raw, where)
            except ValueError:
                if (kind, key) in needed:
                    raise
                continue
            matrices[kind, key] = cupix_matrix(raw, chosen)
            layouts[f"{kind}.{key}"] = f"{chosen} ({how})"
        scale = scale_vector(prop(group).get("scale"), f"pointcloud {group.get('id')} (group) meta.prop")
        world_scale = scale_vector(prop(group).get("wscale"), f"pointcloud {group.get('id')} (group) meta.prop.wscale")
        parent = matrices.get(("group", "tm" if compose_mode == "group_sub" else "wtm"))
        factor = scale if compose_mode == "group_sub" else world_scale
        applied, reason = (scale_decision(scale_mode, parent, factor) if parent is not None
                           else (False, "not used by compose: sub_world"))
        world = compose(compose_mode, matrices.get(("group", "tm")), matrices.get(("group", "wtm")),
                        matrices.get(("sub", "tm")), matrices.get(("sub", "wtm")),
                        scale=scale if applied else None, world_scale=world_scale if applied else None)
        final = extra @ world if extra is not None else world
        record = {
            "sub": sub.get("id"), "group": group.get("id"), "compose": compose_mode, "layout": layouts,
            "group_tm": matrices[("group", "tm")].tolist() if ("group", "tm") in matrices else None,
            "sub_tm": matrices[("sub", "tm")].tolist() if ("sub", "tm") in matrices else None,
            "scale": {"vector": factor, "decision": reason},
            "world": world.tolist(), "extra": extra.tolist() if extra is not None else None,
            "check_world": check_against_wtm(check_world, compose_mode, world, matrices, scale, world_scale,
                                             scale_mode, sub, group),
        }
        records.append((final, record))
    return records, chooser.notes


def check_against_wtm(check_world, compose_mode, world, matrices, scale, world_scale, scale_mode, sub, group):
    """Compares the composed matrix with the sub's own wtm; on a mismatch, names a compose mode that matches."""
    import numpy as np
    sub_wtm = matrices.get(("sub", "wtm"))
    if check_world == "off" or compose_mode == "sub_world" or sub_wtm is None or np.allclose(sub_wtm, np.eye(4)):
        return None
    shift, angle = difference(world, sub_wtm)
    result = {"translation_m": shift, "rotation_rad": angle, "matches": shift <= MM and angle <= MILLIRADIAN}
    if not result["matches"]:
        alternatives = []
        for mode in ("group_world_sub", "group_sub"):
            parent = matrices.get(("group", "tm" if mode == "group_sub" else "wtm"))
            if mode == compose_mode or parent is None or ("sub", "tm") not in matrices:
                continue
            factor = scale if mode == "group_sub" else world_scale
            applied, _ = scale_decision(scale_mode, parent, factor)
            candidate = compose(mode, matrices.get(("group", "tm")), matrices.get(("group", "wtm")),
                                matrices[("sub", "tm")], sub_wtm, scale=scale if applied else None,
                                world_scale=world_scale if applied else None)
            if all(d <= limit for d, limit in zip(difference(candidate, sub_wtm), (MM, MILLIRADIAN))):
                alternatives.append(mode)
        hint = f"; compose: {alternatives[0]} matches it" if alternatives else "; compose: sub_world uses it as it is"
        result["problem"] = (f"pointcloud {sub.get('id')} (group {group.get('id')}): compose {compose_mode} differs "
                             f"from the sub's wtm by {shift:.4f} m and {angle:.5f} rad{hint}")
    return result


class AlignTransform(Transform):
    """Puts every Cupix sub into the world frame: group.tm · diag(scale) · sub.tm by default (see `compose`)."""

    moves_points = True

    options = (
        Option("layout", choice("auto", *LAYOUTS), "how Cupix stores the 16 numbers (auto: detected per matrix)",
               default="auto"),
        Option("compose", choice(*COMPOSES), "group_sub: group.tm · sub.tm; sub_world: sub.wtm; "
               "group_world_sub: group.wtm · sub.tm", default="group_sub"),
        Option("scale", choice("auto", "apply", "ignore"), "the group's scale vector between group and sub "
               "(auto: only when the group matrix does not carry it)", default="auto"),
        Option("check_world", choice("warn", "error", "off"), "compare with the sub's own wtm (1 mm, 0.001 rad)",
               default="warn"),
        Option("extra", anything("4 rows of 4 numbers"), "a matrix applied after alignment, e.g. into a site grid",
               default=None),
        Option("corrections", path(), "a corrections file of sink.overlap: each sub's 4x4, matched by sub id, "
               "applied last (after extra)", default=None),
    )

    @classmethod
    def check(cls, options):
        cls.extra_matrix(options)

    @staticmethod
    def extra_matrix(options):
        if options["extra"] is None:
            return None
        try:
            matrix = as_matrix(typed(options["extra"]))
            check_affine(matrix)
        except ValueError as error:
            raise OptionError(str(error), "extra") from None
        return matrix

    def __init__(self, options, label=""):
        super().__init__(options, label)
        self.extra = self.extra_matrix(self.options)

    def corrections(self, items):
        """{item index: the correction of its sub} from the `corrections` file; every sub of the run must have one."""
        named = self.options["corrections"]
        if named is None:
            return {}
        try:
            by_sub = read_corrections(named)
        except OptionError as error:
            raise StageError(f"{self.label}: corrections: {error}") from None
        found = {}
        for item in items:
            sub = str(((item.metadata.get("cupix") or {}).get("sub") or {}).get("id"))
            if sub not in by_sub:
                raise StageError(f"{self.label}: corrections: {named} has no correction for sub {sub} ({item.name})")
            found[item.index] = by_sub[sub]
        return found

    def prepare(self, items):
        """{item index: (world matrix, the record of how it was decided)} for every sub of the run."""
        entries = []
        for item in items:
            cupix = item.metadata.get("cupix")
            if not cupix:
                raise StageError(f"{self.label}: {item.name} has no Cupix metadata: read it with source.cupix, "
                                 "or give source.files a `metadata` file")
            entries.append((cupix.get("sub") or {}, cupix.get("group")))
        try:
            records, notes = plan_alignment(entries, self.options["layout"], self.options["compose"],
                                            self.options["scale"], self.options["check_world"], self.extra)
        except ValueError as error:
            raise StageError(f"{self.label}: {error}") from error
        for note in notes:
            log.info("%s: %s", self.label, note)
        corrections = self.corrections(items)
        alignments = {}
        for item, (matrix, record) in zip(items, records):
            if item.index in corrections:
                matrix = corrections[item.index] @ matrix
                record["correction"] = {"file": self.options["corrections"], "matrix": corrections[item.index].tolist()}
            problem = (record["check_world"] or {}).get("problem")
            if problem and self.options["check_world"] == "error":
                raise StageError(f"{self.label}: {problem}")
            if problem:
                log.warning("%s: %s", self.label, problem)
            record["notes"] = notes
            alignments[item.index] = (matrix, record)
        return alignments

    def start(self, item, info, decision=None):
        matrix, record = decision
        after, function = matrix_transform(matrix, self.label, info)
        step = dict(after.applied[-1], alignment=record)
        return replace(after, applied=after.applied[:-1] + (step,)), function
