"""The check at the end of a run of sink.overlap: every pair of items measured, one line per pair that disagrees,
the run failed if asked, and the report, the corrections and the picture written through the run's staging."""
import json
import logging
import re
from pathlib import Path

import numpy as np

from pipeline.errors import StageError

from . import adjust, corrections, pairs

log = logging.getLogger(__name__)


def check_overlap(label, options, gathered, staging):
    """`gathered`: [(item, what its Thinning writer kept)]; returns {final path: what the run report says of it}."""
    names = [item.name for item, _ in gathered]
    kept = [np.empty((0, 3)) if g is None else g["xyz"] for _, g in gathered]
    origin = site_origin(kept)
    clouds = [pairs.Cloud(name, xyz - origin) for name, xyz in zip(distinct(names), kept)]
    measured = []
    for a in range(len(clouds)):
        for b in range(a + 1, len(clouds)):
            pair = pairs.measure(clouds[a], clouds[b], options["distance"], options["min_overlap"],
                                 options["tolerance"])
            measured.append({"a": a, "b": b, **pair})
    counts = pairs.verdict_counts(measured)
    for pair in measured:
        if pair["verdict"] == pairs.DISAGREES:
            log.warning("%s: %s", label, disagreement(pair, options["tolerance"]))
    log.info("%s: %d pair(s): %d agree, %d disagree, %d with too little overlap to say", label, len(measured),
             counts[pairs.AGREES], counts[pairs.DISAGREES], counts[pairs.TOO_LITTLE])
    if counts[pairs.DISAGREES] and options["fail_on_disagreement"]:
        raise StageError(f"{label}: {counts[pairs.DISAGREES]} pair(s) disagree by more than "
                         f"{options['tolerance'] * 1000:g} mm (fail_on_disagreement: true)")
    report = {"options": {name: options[name] for name in ("cell", "distance", "min_overlap", "tolerance",
                                                           "fixed")},
              "origin": origin.tolist(),
              "items": [{"id": item.id, "name": item.name, "points": 0 if g is None else g["points"],
                         "thinned_points": len(xyz)} for (item, g), xyz in zip(gathered, kept)],
              "pairs": [public(pair, origin) for pair in measured],
              "summary": {"pairs": len(measured), "agree": counts[pairs.AGREES],
                          "disagree": counts[pairs.DISAGREES], "too_little_overlap": counts[pairs.TOO_LITTLE]}}
    files = {}
    path = Path(options["path"].format())
    staging.create(path).write_text(as_text(report), encoding="utf-8")
    files[str(path)] = dict(report["summary"])
    if options["corrections"] is not None:
        graph = [{"a": p["a"], "b": p["b"], "verdict": p["verdict"],
                  "matrix": p["icp"]["matrix"] if p["icp"] and p["icp"]["constrained"] else None,
                  "weight": p["distances"] and min(d["points"] for d in p["distances"].values())}
                 for p in measured]
        matrices, why = adjust.adjust(names, graph, options["fixed"])
        unresolved = [f"{p['first']} and {p['second']}" for p in measured
                      if p["verdict"] == pairs.DISAGREES and p["a"] in why and p["b"] in why]
        for pair in unresolved:
            log.warning("%s: %s disagree but both are held fixed: the corrections leave that as it is", label, pair)
        entries = [{"id": item.id, "name": item.name, "sub": item.fields.get("sub"), "held_fixed": why.get(number),
                    "matrix": in_world(matrix, origin).tolist(),
                    **adjust.described(matrix, clouds[number].local.mean(axis=0) if len(xyz) else np.zeros(3))}
                   for number, ((item, _), matrix, xyz) in enumerate(zip(gathered, matrices, kept))]
        target = Path(options["corrections"].format())
        staging.create(target).write_text(as_text(corrections.document(entries, unresolved)), encoding="utf-8")
        files[str(target)] = {"moved": sum(1 for e in entries if e["held_fixed"] is None)}
    if options["plot"] is not None:
        from .plot import plot_overlap
        target = Path(options["plot"].format())
        plot_overlap(clouds, origin, measured, options["tolerance"], staging.create(target), title=path.stem)
        files[str(target)] = {}
    return files


NUMBERS = re.compile(r"\[\s*(-?[0-9][-+.0-9eE]*(?:,\s*-?[0-9][-+.0-9eE]*)*)\s*\]")


def as_text(document):
    """JSON with two-space indents, but a list of numbers on one line: a matrix reads as its four rows.

    >>> print(as_text({"matrix": [[1.0, -2.5e-05], [0.0, 1.0]], "names": ["a", "b"]}), end="")
    {
      "matrix": [
        [1.0, -2.5e-05],
        [0.0, 1.0]
      ],
      "names": [
        "a",
        "b"
      ]
    }
    """
    text = json.dumps(document, indent=2)
    return NUMBERS.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",")) + "]", text) + "\n"


def distinct(names):
    """The names the report, the log and the picture give the items: their own, with the item's number in
    brackets where another item has the same name.

    >>> distinct(["scan", "other", "scan"])
    ['scan [0]', 'other', 'scan [2]']
    """
    return [f"{name} [{number}]" if names.count(name) > 1 else name for number, name in enumerate(names)]


def site_origin(clouds):
    """A point near every item, in whole metres: the middle of their bounds."""
    filled = [xyz for xyz in clouds if len(xyz)]
    if not filled:
        return np.zeros(3)
    lows = np.min([xyz.min(axis=0) for xyz in filled], axis=0)
    highs = np.max([xyz.max(axis=0) for xyz in filled], axis=0)
    return np.round((lows + highs) / 2)


def in_world(matrix, origin):
    """A site-frame 4×4 in the frame the points came in (the site frame is that one moved by -origin)."""
    shift = np.eye(4)
    shift[:3, 3] = origin
    back = np.eye(4)
    back[:3, 3] = -origin
    return shift @ matrix @ back


def public(pair, origin):
    """A measured pair as the report gives it: item names, and the ICP matrix in the points' frame."""
    shown = {key: value for key, value in pair.items() if key not in ("a", "b")}
    if pair["icp"] is not None:
        shown["icp"] = {**pair["icp"], "matrix": in_world(pair["icp"]["matrix"], origin).tolist()}
    return shown


def disagreement(pair, tolerance):
    d = pair["distances"]
    icp = pair["icp"]
    return (f"{pair['first']} and {pair['second']} disagree: median distance "
            f"{d['first_to_second']['median'] * 1000:.1f} mm one way, {d['second_to_first']['median'] * 1000:.1f} mm "
            f"the other; ICP would move {pair['second']} by {np.linalg.norm(icp['translation']) * 1000:.1f} mm and "
            f"{icp['rotation_degrees']:.3f}° (tolerance {tolerance * 1000:g} mm)")
