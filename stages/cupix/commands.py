"""`pipeline cupix ls | inspect`: find the ids to put in a config, and see the alignment before downloading."""
import argparse
import json
import math
import os
import sys

import numpy as np

from pipeline.errors import PipelineError, UsageError

from ..matrix import LAYOUTS
from .alignment import COMPOSES, plan_alignment, rotation_angle
from .listing import Listing, attributes, meta, parent_id
from .client import Backoff, CupixClient

TOKEN_VARIABLE = "CUPIX_API_KEY"


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
            command.add_argument("--capture", metavar="ID", required=True)
            command.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto")
            command.add_argument("--compose", choices=COMPOSES, default="group_sub")
            command.add_argument("--scale", choices=("auto", "apply", "ignore"), default="auto")
    return top


def main(argv=None) -> int:
    try:
        args = parser().parse_args(argv)
    except SystemExit as exit:
        return int(exit.code or 0)
    token = os.environ.get(TOKEN_VARIABLE)
    if not token:
        raise UsageError(f"set {TOKEN_VARIABLE} to your Cupix API token")
    if not args.base_url:
        raise UsageError("give --base-url (or set CUPIX_BASE_URL)")
    client = CupixClient(args.base_url, token, timeout=args.timeout, retries=args.retries, backoff=Backoff())
    rows, columns = (ls if args.command == "ls" else inspect)(client, args)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
    else:
        print(table(rows, columns))
    return 1 if any(row.get("problem") for row in rows) else 0


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
    """Rows for every group and every finished sub, aligned together as one run of transform.align would."""
    listing = Listing(client.pointclouds(capture_id=args.capture))
    subs = [s for s in listing.subs() if s.get("state") == "done"]
    listing.find_groups(client.pointcloud, subs)
    placed = [s for s in subs if listing.group_of(s) is not None]
    records, notes, problems = align_each(placed, listing, args)
    rows = []
    for group in [a for a in listing.by_id.values() if a.get("kind") == "group"]:
        members = [s for s in placed if parent_id(s) == group["id"]]
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
            rows.append(row)
    rows += [{"kind": "sub", "id": s["id"], "name": s.get("name"), "parent": parent_id(s),
              "problem": f"its group {parent_id(s)} was not found"} for s in subs if s not in placed]
    if not rows:
        raise PipelineError(f"capture {args.capture}: no point clouds")
    return rows, ("kind", "id", "parent", "layout", "translation", "rotation_deg", "check_world", "name", "problem")


def align_each(subs, listing, args):
    """plan_alignment over every sub at once (one layout decision for the run); a sub it refuses is set
    apart with its problem and the others are aligned without it."""
    problems = {}
    while True:
        entries = [(s, listing.group_of(s)) for s in subs if s["id"] not in problems]
        try:
            records, notes = plan_alignment(entries, args.layout, args.compose, args.scale, "warn")
            return {s["id"]: r for (s, _), r in zip(entries, records)}, notes, problems
        except ValueError as error:
            found = next(((s, problem) for s, g in entries if (problem := failing(s, g, args))), None)
            if found is None:
                raise PipelineError(f"capture {args.capture}: {error}") from error
            culprit, problem = found
            problems[culprit["id"]] = problem


def failing(sub, group, args):
    """The problem plan_alignment finds with one sub alone, or None."""
    try:
        plan_alignment([(sub, group)], args.layout, args.compose, args.scale, "off")
    except ValueError as error:
        return str(error)
    return None


if __name__ == "__main__":
    sys.exit(main())
