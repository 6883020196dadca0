"""The run report: what was read, what was done to it, and what was written, with checksums."""
import json
import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version

from . import __version__

DEPENDENCIES = ("numpy", "laspy", "lazrs", "PyYAML", "requests", "open3d", "open3d-cpu")


def dependency_versions():
    found = {}
    for name in DEPENDENCIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def item_entry(result):
    item = result.item
    return {
        "id": item.id,
        "name": item.name,
        "location": item.location,
        "points_in": result.points_in,
        "points_out": result.points_out,
        "bounds_in": result.bounds_in.as_dict() if result.bounds_in else None,
        "bounds_out": result.bounds_out.as_dict() if result.bounds_out else None,
        "applied": list(result.applied),
        "stages": stage_counts(result),
        "outputs": result.outputs,
        "seconds": round(result.seconds, 3),
    }


def stage_counts(result):
    """Points into and out of each transform of an item, in order."""
    counts, points = [], result.points_in
    for label, out in result.stage_points.items():
        counts.append({"stage": label, "points_in": points, "points_out": out})
        points = out
    return counts


def build(config, results, started_at, wall_seconds, jobs):
    """The run report of runner.Results."""
    executor, results, merged_outputs = results.executor, results.items, results.merged
    return {
        "tool": {"name": "cupix-pipeline", "version": __version__},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "dependencies": dependency_versions(),
        "command": "run",
        "config": {"path": str(config.path), "sha256": config.sha256},
        "stages": [{"type": s.type, "tag": s.tag, "options": s.public_options()} for s in config.stages],
        "jobs": jobs,
        "executor": executor,
        "started_at": started_at.isoformat(timespec="seconds"),
        "wall_seconds": round(wall_seconds, 3),
        "totals": {
            "items": len(results),
            "points_in": sum(r.points_in for r in results),
            "points_out": sum(r.points_out for r in results),
            "outputs": sum(len(r.outputs) for r in results) + len(merged_outputs),
            "bytes_written": sum(o["size"] for r in results for o in r.outputs) + sum(o["size"] for o in merged_outputs),
        },
        "items": [item_entry(r) for r in results],
        "merged_outputs": list(merged_outputs),
    }


def now():
    return datetime.now(timezone.utc)


def dumps(report):
    return json.dumps(report, indent=2, sort_keys=False, default=str) + "\n"


def summary(report):
    totals = report["totals"]
    seconds = report["wall_seconds"]
    rate = totals["points_in"] / seconds / 1e6 if seconds else 0.0
    return (f"done: {totals['items']} item(s), {totals['points_in']:,} points in, {totals['points_out']:,} out, "
            f"{totals['outputs']} file(s) written ({totals['bytes_written'] / 1e6:.1f} MB) "
            f"in {seconds:.1f} s ({rate:.2f} Mpts/s)")

