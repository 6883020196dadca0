"""sink.overlap's pair measurement searches only the points that can matter: the distances only near the other
scan's box, ICP only near the overlap; against open3d on whole clouds as the oracle (two scans of the building of
sample_configs/make_building_data.py, the second moved 5 cm and 0.3°)."""
import importlib.util

import numpy as np
import open3d as o3d
import pytest

from stages.overlap import pairs
from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("make_building_data", REPO / "sample_configs/make_building_data.py")
building = importlib.util.module_from_spec(spec)
spec.loader.exec_module(building)

DISTANCE = 0.10


@pytest.fixture(scope="module")
def scans():
    """scan_01 and scan_02 of the building (their panos 8 m apart), the second moved as scan_03 is in the demo."""
    rng = np.random.default_rng(18)
    first, _ = building.scan(rng, building.PANOS[0], 60)
    second, _ = building.scan(rng, building.PANOS[1], 60)
    turn = building.rotation(building.DISPLACEMENT_AXIS, building.DISPLACEMENT_DEGREES)
    pano = np.array([*building.PANOS[1], building.PANO_HEIGHT])
    second = (second - pano) @ turn.T + pano + building.DISPLACEMENT_MOVE
    return pairs.Cloud("first", first), pairs.Cloud("second", second)


def whole_cloud_icp(moving, fixed):
    """The two rounds of pairs.icp on every point, as open3d gives them."""
    registration = o3d.pipelines.registration
    source = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(moving.local))
    criteria = registration.ICPConvergenceCriteria(relative_fitness=1e-9, relative_rmse=1e-9, max_iteration=100)
    matrix = np.eye(4)
    for reach in (DISTANCE, DISTANCE * pairs.REFINE):
        result = registration.registration_icp(source, fixed.cloud(), reach, matrix,
                                               registration.TransformationEstimationPointToPlane(), criteria)
        matrix = np.asarray(result.transformation)
    return matrix, result.fitness, result.inlier_rmse


def spied(monkeypatch):
    """The number of points of each call of pairs.icp_rounds."""
    calls, original = [], pairs.icp_rounds
    monkeypatch.setattr(pairs, "icp_rounds", lambda points, *rest: calls.append(len(points)) or original(points, *rest))
    return calls


def test_distances_are_searched_near_the_other_box_only_and_are_those_of_the_nearest_point(scans):
    first, second = scans
    across, nearest, _ = pairs.surface_distances(second.local, first, 1.1)
    tree = o3d.geometry.KDTreeFlann(first.cloud())
    closest = np.array([tree.search_knn_vector_3d(point, 1)[1][0] for point in second.local])
    truth = np.linalg.norm(second.local - first.local[closest], axis=1)
    searched = np.isfinite(nearest)
    inside = np.all((second.local >= first.local.min(axis=0) - 1.1) & (second.local <= first.local.max(axis=0) + 1.1),
                    axis=1)
    assert np.array_equal(searched, inside) and 0 < searched.sum() < len(searched)
    np.testing.assert_allclose(nearest[searched], truth[searched], rtol=0, atol=1e-12)
    assert np.all(truth[~searched] > 1.1) and np.all(np.isinf(across[~searched]))
    normals = first.normals()[closest]
    np.testing.assert_allclose(across[searched], np.abs(np.sum((second.local - first.local[closest]) * normals,
                                                               axis=1))[searched], rtol=0, atol=1e-12)


def test_icp_leaves_out_the_points_far_from_the_overlap_with_the_result_of_every_point(scans, monkeypatch):
    first, second = scans
    _, nearest, _ = pairs.surface_distances(second.local, first, DISTANCE + pairs.ICP_MARGIN)
    calls = spied(monkeypatch)
    matrix, fitness, rmse = pairs.icp(second, first, DISTANCE, nearest)
    expected, expected_fitness, expected_rmse = whole_cloud_icp(second, first)
    kept = int(np.sum(nearest <= DISTANCE + pairs.ICP_MARGIN))
    assert calls == [kept] and kept < 0.8 * len(second.local)
    assert fitness == expected_fitness
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-10)
    assert rmse == pytest.approx(expected_rmse, abs=1e-10)
    assert pairs.rotation_degrees(matrix) == pytest.approx(0.3, abs=0.02)


def test_icp_matches_every_point_again_when_it_moves_one_left_out_by_half_the_margin(scans, monkeypatch):
    first, second = scans
    monkeypatch.setattr(pairs, "ICP_MARGIN", 0.06)  # ICP moves the second scan by about 5 cm: more than 3
    _, nearest, _ = pairs.surface_distances(second.local, first, DISTANCE + pairs.ICP_MARGIN)
    calls = spied(monkeypatch)
    matrix, fitness, _ = pairs.icp(second, first, DISTANCE, nearest)
    expected, expected_fitness, _ = whole_cloud_icp(second, first)
    assert calls == [int(np.sum(nearest <= DISTANCE + 0.06)), len(second.local)]
    assert fitness == expected_fitness
    np.testing.assert_allclose(matrix, expected, rtol=0, atol=1e-10)
