"""sample_configs/prep.yaml runs as it is: the demo capture aligned, cropped, cleaned, thinned and given normals,
written as LAZ and PLY that laspy and open3d read back."""
import json

import laspy
import numpy as np
import open3d
import pytest

from tests.conftest import cli

SCANS = ["scan_01", "scan_02", "scan_03"]
BOUNDS = [[499988, 3999988], [500012, 4000012]]


@pytest.fixture
def prepared(demo_copy):
    done = cli("run", "-q", "--report", demo_copy / "report.json", demo_copy / "prep.yaml")
    assert (done.returncode, done.stderr) == (0, "")
    return demo_copy.parent / "out" / "prep", json.loads((demo_copy / "report.json").read_text())


def test_prep_writes_laz_and_ply_with_normals(prepared):
    folder, report = prepared
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{s}.{e}" for s in SCANS for e in ("laz", "ply"))
    for scan, item in zip(SCANS, report["items"]):
        laz = laspy.read(folder / f"{scan}.laz")
        assert 10_000 < laz.header.point_count == item["points_out"] < 20_000
        assert list(laz.point_format.extra_dimension_names)[-4:] == ["normal_x", "normal_y", "normal_z", "curvature"]
        xyz = np.column_stack([np.asarray(laz.x), np.asarray(laz.y), np.asarray(laz.z)])
        assert (xyz[:, :2] >= BOUNDS[0]).all() and (xyz[:, :2] <= BOUNDS[1]).all()  # cropped to the site
        normals = np.column_stack([np.asarray(laz[f"normal_{a}"], dtype=np.float64) for a in "xyz"])
        assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-6) and (normals[:, 2] >= 0).all()
        ground = xyz[:, 2] < 50.02  # the site's ground is at 50 m
        assert ground.sum() > 1000 and np.median(normals[ground, 2]) > 0.99  # and faces up
        cloud = open3d.io.read_point_cloud(str(folder / f"{scan}.ply"))
        assert cloud.has_normals() and len(cloud.points) == len(xyz)
        assert np.array_equal(np.asarray(cloud.normals), normals)
        exact = np.asarray(cloud.points)  # doubles, as the stages saw them (the LAZ stores millimetres)
        assert np.allclose(exact, xyz, rtol=0, atol=0.0005)
        cells = np.floor(exact / 0.05).astype(np.int64)
        assert len(np.unique(cells, axis=0)) == len(xyz)  # one point per 5 cm cell
        steps = {step["stage"].split(", tag ")[1].rstrip(")"): step for step in item["applied"]}
        assert list(steps) == ["align", "site", "clean", "thin", "normals"]
        assert steps["clean"]["points_in"] > steps["clean"]["points_out"] == steps["thin"]["points_in"]
        assert steps["thin"]["points_out"] == steps["normals"]["points_out"] == item["points_out"]
