"""`pipeline cupix ls | inspect`: find the ids to put in a config, and see the alignment before downloading;
`inspect_config`, what `pipeline inspect CONFIG` runs: the same for the items of a config."""
import argparse
import json
import logging
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from pipeline.errors import PipelineError, UsageError

from ..matrix import LAYOUTS
from .alignment import COMPOSES, plan_alignment, rotation_angle
from .listing import Listing, attributes, meta, parent_id
from .client import Backoff, CupixClient

TOKEN_VARIABLE = "CUPIX_API_KEY"
COLUMNS = ("kind", "id", "parent", "layout", "translation", "rotation_deg", "check_world", "name", "problem")

log = logging.getLogger(__name__)


def parser():
    top = argparse.ArgumentParser(prog="pipeline cupix", description="Look into a Cupix account "
                                  f"(the token comes from ${TOKEN_VARIABLE}).")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, text in (("ls", "list facilities, records, captures or point clouds"),
                       ("inspect", "show how transform.align would place every sub of a capture")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--base-url", default=os.environ.get("CUPIX_BASE_URL"),
                             help="the API, e.g. https://acme.cupix.works/api/v1 (default: $CUPIX_BASE_URL)")
        command.add_argument("--json", action="store_true", help="print JSON instead of a table")
        command.add_argument("--timeout", type=float, default=60.0)
        command.add_argument("--retries", type=int, default=5)
        if name == "ls":
            which = command.add_mutually_exclusive_group()
            which.add_argument("--facility", metavar="KEY", help="the records (captures by date) of a facility")
            which.add_argument("--record", metavar="ID", help="the captures of a record")
            which.add_argument("--capture", metavar="ID", help="the point clouds of a capture")
            command.add_argument("--pointclouds", action="store_true", help="with --record: its point clouds")
        else:
            command.add_argument("--capture", metavar="ID", help="the capture (required unless --listing)")
            command.add_argument("--listing", metavar="FILE", help="read a local listing instead of the API: a "
                                 "saved GET /pointclouds reply, a download cache's manifest.json or a metadata file")
            command.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto")
            command.add_argument("--compose", choices=COMPOSES, default="group_sub")
            command.add_argument("--scale", choices=("auto", "apply", "ignore"), default="auto")
            command.add_argument("--plot", metavar="FILE.png", help="also draw every sub where it would be placed")
    return top


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    local = args.command == "inspect" and args.listing
    if args.command == "inspect" and not (args.capture or args.listing):
        raise UsageError("give --capture (or --listing)")
    if args.command == "inspect" and args.plot:
        check_plot_path(args.plot)
    client = None
    if not local:
        token = os.environ.get(TOKEN_VARIABLE)
        if not token:
            raise UsageError(f"set {TOKEN_VARIABLE} to your Cupix API token")
        if not args.base_url:
            raise UsageError("give --base-url (or set CUPIX_BASE_URL)")
        client = CupixClient(args.base_url, token, timeout=args.timeout, retries=args.retries, backoff=Backoff())
    if args.command == "ls":
        rows, columns = ls(client, args)
        return show(rows, columns, args.json)
    rows, placed = inspect(client, args)
    if args.plot:
        what = f"capture {args.capture}" if args.capture else Path(args.listing).name
        draw(placed, args.plot, what, args.compose)
    return show(rows, COLUMNS, args.json)


def show(rows, columns, as_json):
    """Prints the rows (a table, or JSON); the exit code: 1 when a row has a problem."""
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(table(rows, columns))
    return 1 if any(row.get("problem") for row in rows) else 0


def check_plot_path(path):
    if not str(path).lower().endswith(".png"):
        raise UsageError(f"--plot {path}: expected a file name ending in .png")


def table(rows, columns):
    """A plain text table: one header line, then one line per row, columns padded to fit."""
    cells = [[str(c).upper() for c in columns]] + [["" if r.get(c) is None else str(r.get(c)) for c in columns]
                                                     for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def pointcloud_row(attrs):
    prop, potree = meta(attrs), meta(attrs, "potree")
    return {"id": attrs["id"], "kind": attrs.get("kind"), "parent": parent_id(attrs), "state": attrs.get("state"),
            "type": attrs.get("pointcloud_type"), "points": prop.get("original_point_count") or potree.get("points"),
            "name": attrs.get("name")}


def ls(client, args):
    if args.capture or (args.record and args.pointclouds):
        entries = client.pointclouds(capture_id=args.capture, record_id=None if args.capture else args.record)
        rows = [pointcloud_row(a) for a in Listing(entries).by_id.values()]
        return rows, ("id", "kind", "parent", "state", "type", "points", "name")
    if args.pointclouds:
        raise UsageError("--pointclouds goes with --record")
    if args.record:
        endpoint, params = "/captures", {"record_id": args.record, "fields": "id,name,created_at,updated_at"}
    elif args.facility:
        endpoint, params = "/records", {"facility_key": args.facility, "fields": "id,name,created_at,updated_at"}
    else:
        endpoint, params = "/facilities", {"fields": "id,name,key"}
    rows = [attributes(entry) for entry in client.listing(endpoint, params, what=f"GET {endpoint}")]
    columns = ("id", "key", "name") if endpoint == "/facilities" else ("id", "name", "created_at")
    return rows, columns


def describe_matrix(matrix):
    translation = matrix[:3, 3]
    return (" ".join(f"{v:.3f}" for v in translation), f"{math.degrees(rotation_angle(matrix)):.3f}")


def inspect(client, args):
    """Rows for every group and every finished sub, aligned together as one run of transform.align would, and
    what the plot draws. Subs come from the API (`client`), or from `args.listing` when it is given."""
    if args.listing:
        listing = Listing.from_file(args.listing)
        wanted = str(args.capture) if args.capture else None
        subs = [s for s in listing.subs() if s.get("state") == "done"
                and (wanted is None or listing.capture_of(s) in (None, wanted))]
    else:
        listing = Listing(client.pointclouds(capture_id=args.capture))
        subs = [s for s in listing.subs() if s.get("state") == "done"]
        listing.find_groups(client.pointcloud, subs)
    groups = [a for a in listing.by_id.values() if a.get("kind") == "group"]
    rows, placed = describe([(s, listing.group_of(s)) for s in subs], groups, args)
    if not rows:
        raise PipelineError(f"{'capture ' + str(args.capture) if args.capture else args.listing}: no point clouds")
    return rows, placed


def describe(entries, groups, options):
    """The rows of `inspect` and the subs as the plot draws them, for (sub, group) entries (group None when
    it was not found); `options` has transform.align's layout, compose, scale and extra (a matrix or None)."""
    found = [(s, g) for s, g in entries if g is not None]
    records, notes, problems = align_each(found, options)
    rows, placed = [], {"placed": [], "unplaced": []}
    for group in groups:
        members = [s for s, g in found if g["id"] == group["id"]]
        rows.append({"kind": "group", "id": group["id"], "name": group.get("name"), "subs": len(members)})
        for sub in members:
            row = {"kind": "sub", "id": sub["id"], "name": sub.get("name"), "parent": group["id"],
                   "state": sub.get("state"), "problem": problems.get(sub["id"])}
            if sub["id"] in records:
                matrix, record = records[sub["id"]]
                translation, angle = describe_matrix(np.array(matrix))
                check = record["check_world"]
                row.update(layout=record["layout"].get("sub.tm"), translation=translation, rotation_deg=angle,
                           check_world="-" if check is None else "ok" if check["matches"] else
                           f"{check['translation_m']:.3f} m / {check['rotation_rad']:.4f} rad off",
                           scale=record["scale"]["decision"], notes=notes)
                row["problem"] = row["problem"] or (check or {}).get("problem")
                placed["placed"].append({"id": sub["id"], "name": sub.get("name") or sub["id"], "group": group["id"],
                                         "group_name": group.get("name"), "matrix": np.array(matrix).tolist(),
                                         "problem": row["problem"]})
            else:
                placed["unplaced"].append({"id": sub["id"], "name": sub.get("name") or sub["id"],
                                           "problem": row["problem"]})
            rows.append(row)
    lost = [s for s, g in entries if g is None]
    rows += [{"kind": "sub", "id": s["id"], "name": s.get("name"), "parent": parent_id(s),
              "problem": f"its group {parent_id(s)} was not found"} for s in lost]
    placed["unplaced"] += [{"id": s["id"], "name": s.get("name") or s["id"],
                            "problem": f"its group {parent_id(s)} was not found"} for s in lost]
    return rows, placed


def align_each(entries, options):
    """plan_alignment over every (sub, group) at once (one layout decision for the run); a sub it refuses is
    set apart with its problem and the others are aligned without it."""
    problems = {}
    while True:
        kept = [(s, g) for s, g in entries if s["id"] not in problems]
        try:
            records, notes = plan_alignment(kept, options.layout, options.compose, options.scale, "warn",
                                            getattr(options, "extra", None))
            return {s["id"]: r for (s, _), r in zip(kept, records)}, notes, problems
        except ValueError as error:
            found = next(((s, problem) for s, g in kept if (problem := failing(s, g, options))), None)
            if found is None:
                raise PipelineError(str(error)) from error
            culprit, problem = found
            problems[culprit["id"]] = problem


def failing(sub, group, options):
    """The problem plan_alignment finds with one sub alone, or None."""
    try:
        plan_alignment([(sub, group)], options.layout, options.compose, options.scale, "off")
    except ValueError as error:
        return str(error)
    return None


def draw(placed, path, what, compose_mode):
    """The alignment plot of what `describe` found (see plot.py)."""
    from .plot import plot_alignment
    title = f"{what}: where transform.align places each sub (compose {compose_mode})"
    plot_alignment(placed["placed"], placed["unplaced"], path, title)
    log.info("plot: %s", path)


def inspect_config(config, registry, plot=None, as_json=False):
    """`pipeline inspect CONFIG`: the rows of `pipeline cupix inspect` (and with `plot`, the plot) for the items
    the config's source lists (source.files with a `metadata` listing, or source.cupix, which lists the capture
    without downloading it), aligned with the options of its transform.align (its defaults when it has none).
    Returns the exit code: 1 when a sub has a problem."""
    from pipeline.plan import Stages

    from .alignment import AlignTransform

    if plot:
        check_plot_path(plot)
    stages = Stages.build(config, registry)
    try:
        items = stages.source.items()
    finally:
        stages.source.close()
    for item in items:
        if not (item.metadata.get("cupix") or {}).get("sub"):
            raise PipelineError(f"{stages.source.label}: {item.name} has no Cupix metadata: give source.files a "
                                "`metadata` listing, or read the capture with source.cupix")
    spec = next((s for s in config.stages if s.type == "transform.align"), None)
    values = dict(spec.options) if spec else {o.name: o.default for o in AlignTransform.options}
    if spec is None:
        log.info("%s has no transform.align: its defaults are shown", config.path)
    options = SimpleNamespace(**{**values, "extra": AlignTransform.extra_matrix(values)})
    entries = [(item.metadata["cupix"]["sub"], item.metadata["cupix"]["group"]) for item in items]
    groups = list({g["id"]: g for _, g in entries if g is not None}.values())
    rows, placed = describe(entries, groups, options)
    if not rows:
        raise PipelineError(f"{config.path}: the source lists no items")
    if plot:
        draw(placed, plot, Path(config.path).stem, options.compose)
    return show(rows, COLUMNS, as_json)


if __name__ == "__main__":
    sys.exit(main())
