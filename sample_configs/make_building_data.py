"""Generates the overlap demo's data: a Cupix-shaped capture of a small building, with one scan misplaced.

    python sample_configs/make_building_data.py

A 16 m x 12 m building (a floor, outer walls 3 m high, two partitions, columns and a few boxes turned
every way, so that the overlap of any two scans fixes all six degrees of freedom) scanned from four panos.
Each scan holds the surfaces within 6.5 m of its pano, sampled on its own (no two scans share a point),
with 2 mm of noise across the surface, in the pano's local frame, as Cupix delivers them:
- data/building/scan_0N.laz (LAS 1.4 format 6);
- data/building/capture.json: the capture's pointcloud listing as `GET /pointclouds` returns it (one group
  and four subs, matrices stored row-major; wtm = group.tm · sub.tm);
- data/building/truth.json: how scan_03's `tm` was made wrong. Its listed pose is its true pose moved, in the
  survey frame, by 0.3° about an axis through its pano and then 5 cm, as a mistake in registration would:
  `displacement` is that move (the matrix taking the true points to where the listing puts them), so the
  correction that sink.overlap should find for scan_03 is its inverse.
The output is the same on every run (fixed seed, fixed header dates). `make(folder, displaced=False)` makes
the same capture without the mistake (the tests use both).
"""
import datetime
import json
import sys
from pathlib import Path

import laspy
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_demo_data import pose, row_major  # noqa: E402 (the demo's generator, beside this one)
DENSITY = 250  # points per square metre of surface, in each scan
NOISE = 0.002  # metres, across the surface
REACH = 6.5  # metres: what a scan holds around its pano
PANOS = [(4.0, 3.5), (12.0, 3.0), (4.0, 9.8), (11.5, 9.0)]
HEADINGS = [15.0, 100.0, -60.0, 200.0]  # degrees about Z
PANO_HEIGHT = 1.5
GROUP_ROTATION, GROUP_TRANSLATION = 20.0, (600_000.0, 5_000_000.0, 100.0)
CAPTURE_ID, GROUP_ID, FIRST_SUB_ID = 4321, 7100, 7101
DISPLACED = 2  # scan_03
DISPLACEMENT_DEGREES, DISPLACEMENT_AXIS = 0.3, (0.2, -0.3, 1.0)
DISPLACEMENT_MOVE = (0.03, -0.04, 0.0)  # metres: 5 cm


def rotation(axis, degrees):
    """The 3×3 rotation by `degrees` about `axis` (Rodrigues)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    angle = np.radians(degrees)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross


def boxes():
    """The building's solid parts as boxes: (centre x, y, size x, y, height, heading degrees). Walls are thin
    boxes; only the faces a scan could see are sampled (not those lying on the floor)."""
    walls = [(8.0, 0.0, 16.0, 0.2, 3.0, 0), (8.0, 12.0, 16.0, 0.2, 3.0, 0),
             (0.0, 6.0, 0.2, 12.0, 3.0, 0), (16.0, 6.0, 0.2, 12.0, 3.0, 0),
             (8.0, 2.5, 0.15, 5.0, 3.0, 0), (2.5, 6.5, 5.0, 0.15, 3.0, 0)]
    columns = [(6.0, 6.0, 0.4, 0.4, 3.0, 0), (10.0, 6.0, 0.4, 0.4, 3.0, 0), (13.5, 10.5, 0.5, 0.5, 3.0, 0)]
    furniture = [(3.0, 2.0, 1.2, 0.6, 0.8, 30), (12.5, 1.8, 1.0, 1.0, 1.1, -25), (6.5, 10.0, 1.6, 0.8, 0.75, 55),
                 (10.5, 8.0, 0.8, 0.8, 1.4, 10), (14.0, 5.0, 1.2, 0.5, 0.9, 70), (7.0, 4.0, 0.6, 0.6, 1.0, 45)]
    return walls + columns + furniture


def box_faces(centre_x, centre_y, size_x, size_y, height, heading):
    """The five visible faces of a box as (origin, edge u, edge v, outward normal)."""
    turn = pose(heading, (centre_x, centre_y, 0.0))[:3, :3]
    half = np.array([size_x / 2, size_y / 2])
    centre = np.array([centre_x, centre_y, 0.0])
    faces = []
    for axis, sign in ((0, 1), (0, -1), (1, 1), (1, -1)):
        normal = np.zeros(3)
        normal[axis] = sign
        along = np.zeros(3)
        along[1 - axis] = 2 * half[1 - axis]
        corner = np.zeros(3)
        corner[axis] = sign * half[axis]
        corner[1 - axis] = -half[1 - axis]
        faces.append((centre + turn @ corner, turn @ along, np.array([0.0, 0.0, height]), turn @ normal))
    top_corner = np.array([-half[0], -half[1], height])
    faces.append((centre + turn @ top_corner, turn @ np.array([2 * half[0], 0, 0]),
                  turn @ np.array([0, 2 * half[1], 0]), np.array([0.0, 0.0, 1.0])))
    return faces


def surfaces():
    """Every surface of the site as (origin, edge u, edge v, normal): the floor, then the boxes' faces."""
    floor = [(np.array([0.0, 0.0, 0.0]), np.array([16.0, 0, 0]), np.array([0, 12.0, 0]), np.array([0, 0, 1.0]))]
    return floor + [face for box in boxes() for face in box_faces(*box)]


def scan(rng, pano, density):
    """One scan's points (site frame) and their surface normals: every surface sampled at `density`, kept within
    REACH of the pano, with NOISE across the surface."""
    points, normals = [], []
    for origin, u, v, normal in surfaces():
        area = np.linalg.norm(np.cross(u, v))
        count = rng.poisson(area * density)
        s, t = rng.random(count), rng.random(count)
        xyz = origin + s[:, None] * u + t[:, None] * v + rng.normal(0, NOISE, count)[:, None] * normal
        inside = (xyz[:, 0] >= 0) & (xyz[:, 0] <= 16) & (xyz[:, 1] >= 0) & (xyz[:, 1] <= 12)  # walls' outer faces
        near = np.hypot(xyz[:, 0] - pano[0], xyz[:, 1] - pano[1]) < REACH
        keep = inside & near
        points.append(xyz[keep])
        normals.append(np.repeat(normal[None], keep.sum(), axis=0))
    return np.concatenate(points), np.concatenate(normals)


def displacement(group_tm, sub_tm):
    """The move of the misplaced scan in the survey frame: 0.3° about an axis through its pano, then 5 cm."""
    pano = (group_tm @ sub_tm)[:3, 3]
    move = np.eye(4)
    move[:3, :3] = rotation(DISPLACEMENT_AXIS, DISPLACEMENT_DEGREES)
    move[:3, 3] = pano - move[:3, :3] @ pano + np.array(DISPLACEMENT_MOVE)
    return move


def write_las(path, local, rng, start_time):
    header = laspy.LasHeader(version="1.4", point_format=6)
    header.scales = np.array([0.0001, 0.0001, 0.0001])
    header.offsets = np.floor(local.min(axis=0))
    header.creation_date = datetime.date(2026, 11, 1)
    header.generating_software = "make_building_data.py"
    las = laspy.LasData(header)
    las.x, las.y, las.z = local.T
    las.intensity = rng.integers(200, 4000, len(local)).astype(np.uint16)
    las.return_number = np.ones(len(local), np.uint8)
    las.number_of_returns = np.ones(len(local), np.uint8)
    las.gps_time = start_time + np.arange(len(local)) * 1e-5
    las.write(path)


def listing_item(identifier, name, kind, parent, prop):
    attributes = {"id": identifier, "name": name, "state": "done", "kind": kind, "parent": {"id": parent},
                  "pointcloud_type": "uploaded", "capture": {"id": CAPTURE_ID},
                  "updated_at": "2026-11-01T10:00:00Z", "ply_uploaded_at": None,
                  "meta": {"prop": prop, "potree": {}}}
    return {"id": str(identifier), "type": "pointcloud", "attributes": attributes}


def make(folder, displaced=True, density=DENSITY, seed=20261129):
    """Writes the capture into `folder`; returns what the tests check against: per scan, its name, sub id, true
    world matrix, and its points and normals in the survey frame where they truly are; and the displacement."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    group_tm = pose(GROUP_ROTATION, GROUP_TRANSLATION)
    listing = [listing_item(GROUP_ID, "building", "group", None,
                            {"tm": row_major(group_tm), "wtm": row_major(group_tm), "scale": [1.0, 1.0, 1.0],
                             "wscale": [1.0, 1.0, 1.0]})]
    truth = {"displaced": None, "scans": []}
    for number, (pano, heading) in enumerate(zip(PANOS, HEADINGS)):
        name, sub_id = f"scan_{number + 1:02d}", FIRST_SUB_ID + number
        sub_tm = pose(heading, (*pano, PANO_HEIGHT))
        site, normals = scan(rng, pano, density)
        local = np.round((site - sub_tm[:3, 3]) @ sub_tm[:3, :3], 4)  # the inverse of the sub's pose
        write_las(folder / f"{name}.laz", local, rng, start_time=1000.0 * (number + 1))
        listed = sub_tm
        if displaced and number == DISPLACED:
            move = displacement(group_tm, sub_tm)
            listed = np.linalg.inv(group_tm) @ move @ group_tm @ sub_tm
            truth["displaced"] = {"name": name, "id": sub_id, "displacement": move.tolist(),
                                  "degrees": DISPLACEMENT_DEGREES, "axis": list(DISPLACEMENT_AXIS),
                                  "move": list(DISPLACEMENT_MOVE)}
        listing.append(listing_item(sub_id, name, "sub", GROUP_ID,
                                    {"tm": row_major(listed), "wtm": row_major(group_tm @ listed),
                                     "original_file_name": f"{name}.laz", "original_point_count": len(local)}))
        world = group_tm @ sub_tm
        truth["scans"].append({"name": name, "id": sub_id, "world": world.tolist(),
                               "points": site @ group_tm[:3, :3].T + group_tm[:3, 3],
                               "normals": normals @ group_tm[:3, :3].T})
    pages = {"total_entries": len(listing), "total_pages": 1, "per_page": 30, "previous_page": None,
             "current_page": 1, "next_page": None}
    (folder / "capture.json").write_text(json.dumps({"result": {"data": listing, "pagination": pages},
                                                     "session": None}, indent=2) + "\n")
    (folder / "truth.json").write_text(json.dumps({"displaced": truth["displaced"]}, indent=2) + "\n")
    return truth


def main():
    folder = HERE / "data" / "building"
    make(folder)
    for path in sorted(folder.iterdir()):
        print(f"{path.relative_to(HERE)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
