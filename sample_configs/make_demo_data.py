"""Generates the demo's sample data: a Cupix-shaped capture of a small synthetic site.

    python sample_configs/make_demo_data.py

One group (a cluster) and three subs (panos), each scanned from its own position and heading, so each
file holds its points in the sub's local frame, as Cupix delivers them:
- data/scan_01.laz (LAS 1.2 format 3: colour and GPS time), data/scan_02.laz (format 1: GPS time) and
  data/scan_03.ply (binary PLY with colour and intensity);
- data/capture.json: the capture's pointcloud listing as `GET /pointclouds` returns it, with each sub's
  `tm` (its pose in the group) and the group's `tm` (the group in the survey frame: a 30° rotation and a
  move to E 500 000, N 4 000 000, 50 m), stored row-major; `wtm` = group.tm · sub.tm.
The output is the same on every run (fixed seed, fixed header dates).
"""
import datetime
import json
from pathlib import Path

import laspy
import numpy as np

HERE = Path(__file__).resolve().parent
POINTS_PER_SCAN = 20_000
SCANNERS = [(-6.0, -4.0), (5.0, -3.0), (0.0, 6.0)]
HEADINGS = [0.0, 90.0, -135.0]  # degrees about Z: each scanner looks its own way
SCANNER_HEIGHT = 1.5
GROUP_ROTATION, GROUP_TRANSLATION = 30.0, (500_000.0, 4_000_000.0, 50.0)
CAPTURE_ID, GROUP_ID, FIRST_SUB_ID = 1234, 5310, 5311


def pose(degrees, translation):
    """A rotation about Z followed by a translation, as a 4×4 matrix."""
    angle = np.radians(degrees)
    matrix = np.eye(4)
    matrix[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    matrix[:3, 3] = translation
    return matrix


def to_local(xyz, sub_tm):
    """Site (group-frame) points seen from a scanner: the inverse of the sub's pose."""
    inverse = np.linalg.inv(sub_tm)
    return xyz @ inverse[:3, :3].T + inverse[:3, 3]


def site_points(rng, count):
    """Points on a ground plane, the walls of a 12 m x 9 m building and four round columns."""
    kind = rng.choice(3, size=count, p=[0.45, 0.4, 0.15])
    xyz = np.empty((count, 3))
    ground = kind == 0
    xyz[ground, 0] = rng.uniform(-15, 15, ground.sum())
    xyz[ground, 1] = rng.uniform(-12, 12, ground.sum())
    xyz[ground, 2] = rng.normal(0.0, 0.005, ground.sum())
    walls = kind == 1
    side = rng.integers(0, 4, walls.sum())
    along = rng.uniform(-1, 1, walls.sum())
    xyz[walls, 0] = np.where(side < 2, along * 6, np.where(side == 2, -6, 6))
    xyz[walls, 1] = np.where(side < 2, np.where(side == 0, -4.5, 4.5), along * 4.5)
    xyz[walls, 2] = rng.uniform(0, 3.2, walls.sum())
    columns = kind == 2
    centre = rng.integers(0, 4, columns.sum())
    angle = rng.uniform(0, 2 * np.pi, columns.sum())
    xyz[columns, 0] = np.array([-3, 3, -3, 3])[centre] + 0.25 * np.cos(angle)
    xyz[columns, 1] = np.array([-2, -2, 2, 2])[centre] + 0.25 * np.sin(angle)
    xyz[columns, 2] = rng.uniform(0, 3.2, columns.sum())
    return np.round(xyz, 3), kind


def write_las(path, xyz, kind, rng, point_format, start_time):
    header = laspy.LasHeader(version="1.2", point_format=point_format)
    header.scales = np.array([0.001, 0.001, 0.001])
    header.offsets = np.floor(xyz.min(axis=0))
    header.creation_date = datetime.date(2026, 11, 1)
    header.generating_software = "make_demo_data.py"
    las = laspy.LasData(header)
    las.x, las.y, las.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    las.intensity = rng.integers(200, 4000, len(xyz)).astype(np.uint16)
    las.classification = np.array([2, 6, 6], dtype=np.uint8)[kind]  # ground, building
    las.return_number = np.ones(len(xyz), np.uint8)
    las.number_of_returns = np.ones(len(xyz), np.uint8)
    las.gps_time = start_time + np.arange(len(xyz)) * 1e-5
    if point_format in (2, 3):
        palette = np.array([[110, 100, 80], [200, 190, 180], [150, 150, 160]], dtype=np.uint16) * 256
        las.red, las.green, las.blue = palette[kind].T
    las.write(path)


def write_ply(path, xyz, kind, rng):
    palette = np.array([[110, 100, 80], [200, 190, 180], [150, 150, 160]], dtype=np.uint8)
    records = np.empty(len(xyz), [("x", "<f8"), ("y", "<f8"), ("z", "<f8"), ("red", "u1"), ("green", "u1"),
                                   ("blue", "u1"), ("intensity", "<u2")])
    records["x"], records["y"], records["z"] = xyz.T
    records["red"], records["green"], records["blue"] = palette[kind].T
    records["intensity"] = rng.integers(200, 4000, len(xyz))
    header = ("ply\nformat binary_little_endian 1.0\ncomment demo scan written by make_demo_data.py\n"
              f"element vertex {len(xyz)}\nproperty double x\nproperty double y\nproperty double z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty ushort intensity\nend_header\n")
    with open(path, "wb") as handle:
        handle.write(header.encode("ascii"))
        records.tofile(handle)


def visible_from(xyz, kind, scanner, radius=14.0):
    near = np.hypot(xyz[:, 0] - scanner[0], xyz[:, 1] - scanner[1]) < radius
    return xyz[near], kind[near]


def listing_item(identifier, name, kind, parent, prop, **extra):
    attributes = {"id": identifier, "name": name, "state": "done", "kind": kind, "parent": {"id": parent},
                  "pointcloud_type": "uploaded", "capture": {"id": CAPTURE_ID},
                  "updated_at": "2026-11-01T10:00:00Z", "ply_uploaded_at": None,
                  "meta": {"prop": prop, "potree": {}}, **extra}
    return {"id": str(identifier), "type": "pointcloud", "attributes": attributes}


def row_major(matrix):
    return [float(v) for v in np.asarray(matrix).reshape(-1)]


def main():
    rng = np.random.default_rng(20261128)
    folder = HERE / "data"
    folder.mkdir(exist_ok=True)
    xyz, kind = site_points(rng, POINTS_PER_SCAN * 5)
    group_tm = pose(GROUP_ROTATION, GROUP_TRANSLATION)
    names = ["scan_01.laz", "scan_02.laz", "scan_03.ply"]
    items = [listing_item(GROUP_ID, "cluster 1", "group", None,
                          {"tm": row_major(group_tm), "wtm": row_major(group_tm), "scale": [1.0, 1.0, 1.0],
                           "wscale": [1.0, 1.0, 1.0]})]
    scans = []
    for number, (scanner, heading, name) in enumerate(zip(SCANNERS, HEADINGS, names)):
        sub_tm = pose(heading, (*scanner, SCANNER_HEIGHT))
        points, kinds = visible_from(xyz, kind, scanner)
        local = np.round(to_local(points[:POINTS_PER_SCAN], sub_tm), 3)
        scans.append((local, kinds[:POINTS_PER_SCAN]))
        items.append(listing_item(FIRST_SUB_ID + number, name, "sub", GROUP_ID,
                                  {"tm": row_major(sub_tm), "wtm": row_major(group_tm @ sub_tm),
                                   "original_file_name": name, "original_point_count": len(local)}))
    write_las(folder / "scan_01.laz", *scans[0], rng, point_format=3, start_time=1000.0)
    write_las(folder / "scan_02.laz", *scans[1], rng, point_format=1, start_time=2000.0)
    write_ply(folder / "scan_03.ply", *scans[2], rng)
    listing = {"result": {"data": items, "pagination": {"total_entries": len(items), "total_pages": 1,
                                                         "per_page": 30, "previous_page": None, "current_page": 1,
                                                         "next_page": None}}, "session": None}
    (folder / "capture.json").write_text(json.dumps(listing, indent=2) + "\n")
    for path in sorted(folder.iterdir()):
        print(f"{path.relative_to(HERE)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
