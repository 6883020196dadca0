"""transform.align: the Cupix group × sub alignment, from the pure functions to a run end to end."""
import json
import logging
import math

import laspy
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import PipelineError, SourceError, StageError
from stages.cupix.alignment import compose, detect_layout, plan_alignment
from stages.cupix.listing import Listing, match_file
from tests.conftest import make_las
from tests.stages.test_matrix import rigid
from tests.conftest import run


def flat(matrix, layout):
    return [float(v) for v in (matrix if layout == "row_major" else matrix.T).reshape(-1)]


def item(identifier, kind, parent=None, **prop):
    return {"id": str(identifier), "type": "pointcloud",
            "attributes": {"id": identifier, "name": f"pc{identifier}.las", "kind": kind, "state": "done",
                           "parent": {"id": parent}, "meta": {"prop": prop}}}


def entries(group_prop, *sub_props):
    group = item(1, "group", **group_prop)["attributes"]
    return [(item(10 + n, "sub", 1, **prop)["attributes"], group) for n, prop in enumerate(sub_props)]


angles = st.floats(-math.pi, math.pi)


@settings(max_examples=100, deadline=None)
@given(angles, angles, angles, st.tuples(*[st.floats(-1e6, 1e6)] * 3).filter(lambda t: max(map(abs, t)) > 1e-3))
def test_layout_is_detected_for_rigid_transforms_with_translation(yaw, pitch, roll, translation):
    matrix = rigid(yaw, pitch, roll, translation)
    assert detect_layout(flat(matrix, "row_major")) == "row_major"
    assert detect_layout(flat(matrix, "column_major")) == "column_major"


@settings(max_examples=100, deadline=None)
@given(angles, angles, angles)
def test_layout_without_translation_fits_both(yaw, pitch, roll):
    matrix = rigid(yaw, pitch, roll, (0, 0, 0))
    assert detect_layout(flat(matrix, "row_major")) == detect_layout(flat(matrix, "column_major")) == "either"


@settings(max_examples=50, deadline=None)
@given(angles, angles, st.tuples(*[st.floats(-1e5, 1e5)] * 3), st.tuples(*[st.floats(-50, 50)] * 3),
       st.tuples(*[st.floats(0.5, 2.0)] * 3))
def test_compose_is_the_explicit_product(group_yaw, sub_yaw, group_t, sub_t, scale):
    group, sub = rigid(group_yaw, 0, 0, group_t), rigid(sub_yaw, 0.1, 0, sub_t)
    world_group = rigid(group_yaw + 0.2, 0, 0, group_t)
    expected = group @ np.diag([*scale, 1.0]) @ sub
    assert np.allclose(compose("group_sub", group, world_group, sub, None, scale=scale), expected, atol=1e-9)
    assert np.allclose(compose("group_world_sub", group, world_group, sub, None, world_scale=scale),
                       world_group @ np.diag([*scale, 1.0]) @ sub, atol=1e-9)
    assert np.array_equal(compose("sub_world", group, world_group, sub, expected), expected)


QUARTER = np.array([[0, -1, 0, 100], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
SHIFT = np.array([[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3], [0, 0, 0, 1]], dtype=float)


def apply(matrix, point):
    return (matrix @ np.array([*point, 1.0]))[:3].tolist()


@pytest.mark.parametrize("mode, group_prop, sub_prop, expected", [
    # group: a quarter turn then +100 in x; sub: +1 +2 +3. p = (1, 0, 0) -> sub (2, 2, 3) -> world (98, 2, 3)
    ("group_sub", {"tm": flat(QUARTER, "row_major")}, {"tm": flat(SHIFT, "row_major")}, [98.0, 2.0, 3.0]),
    # the group's wtm differs from its tm (another +10 in z): group_world_sub uses it
    ("group_world_sub", {"tm": flat(QUARTER, "row_major"), "wtm": flat(QUARTER + np.diag([0, 0, 0, 0]) +
                                                                          np.pad([[10]], ((2, 1), (3, 0))), "row_major")},
     {"tm": flat(SHIFT, "row_major")}, [98.0, 2.0, 13.0]),
    # sub_world: the sub's own wtm, here a plain +5 in y
    ("sub_world", {"tm": flat(QUARTER, "row_major")},
     {"tm": flat(SHIFT, "row_major"), "wtm": [1, 0, 0, 0, 0, 1, 0, 5, 0, 0, 1, 0, 0, 0, 0, 1]}, [1.0, 5.0, 0.0]),
    # a group scale of 2 applied between group and sub: sub (2, 2, 3) -> (4, 4, 6) -> world (96, 4, 6)
    ("group_sub", {"tm": flat(QUARTER, "row_major"), "scale": [2, 2, 2]}, {"tm": flat(SHIFT, "row_major")},
     [96.0, 4.0, 6.0]),
])
def test_worked_examples(mode, group_prop, sub_prop, expected):
    [(matrix, record)] = plan_alignment(entries(group_prop, sub_prop), compose_mode=mode, check_world="off")[0]
    assert apply(matrix, (1, 0, 0)) == pytest.approx(expected, abs=1e-12)
    assert record["compose"] == mode


def test_scale_modes():
    scaled_group = np.diag([2.0, 2.0, 2.0, 1.0])
    scaled_group[0, 3] = 10
    prop = {"tm": flat(scaled_group, "row_major"), "scale": [2, 2, 2]}
    sub = {"tm": flat(SHIFT, "row_major")}
    [(auto, record)] = plan_alignment(entries(prop, sub), check_world="off")[0]
    assert record["scale"] == {"vector": [2.0, 2.0, 2.0], "decision": "not applied: the group matrix already carries it"}
    assert apply(auto, (0, 0, 0)) == [12.0, 4.0, 6.0]
    [(forced, record)] = plan_alignment(entries(prop, sub), scale_mode="apply", check_world="off")[0]
    assert apply(forced, (0, 0, 0)) == [14.0, 8.0, 12.0] and record["scale"]["decision"] == "applied: scale: apply"
    [(ignored, _)] = plan_alignment(entries({"tm": flat(np.eye(4), "row_major"), "scale": [3, 3, 3]}, sub),
                                    scale_mode="ignore", check_world="off")[0]
    assert apply(ignored, (0, 0, 0)) == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError) as error:
        plan_alignment(entries({"tm": flat(np.eye(4), "row_major"), "scale": [1, 0, 1]}, sub))
    assert str(error.value) == "pointcloud 1 (group) meta.prop: scale must be 3 positive finite numbers, got [1, 0, 1]"


def test_translation_free_run_defaults_to_row_major_and_says_so():
    turn = rigid(0.5, 0, 0, (0, 0, 0))
    records, notes = plan_alignment(entries({"tm": flat(np.eye(4), "row_major")}, {"tm": flat(turn, "row_major")}),
                                    check_world="off")
    assert notes == ["layout: no matrix of this run has a translation, so matrices without a translation are read "
                     "as row_major"]
    assert records[0][1]["layout"] == {"group.tm": "row_major (default)", "sub.tm": "row_major (default)"}
    assert np.allclose(records[0][0], turn)


def test_translation_free_matrix_follows_the_rest_of_the_run():
    turn = rigid(0.5, 0, 0, (0, 0, 0))
    group = rigid(0.1, 0, 0, (500_000, 4_000_000, 50))
    records, notes = plan_alignment(entries({"tm": flat(group, "column_major")}, {"tm": flat(turn, "column_major")}),
                                    check_world="off")
    assert notes == []
    assert records[0][1]["layout"]["sub.tm"] == "column_major (from the other matrices of the run)"
    assert np.allclose(records[0][0], group @ turn)


def test_bad_matrices_name_the_pointcloud():
    projective = [1, 0, 0, 5, 0, 1, 0, 0, 0, 0, 1, 0, 5, 0, 0, 1]
    with pytest.raises(ValueError, match=r"^pointcloud 10 \(sub\) meta.prop.tm is not an affine matrix in either "
                                         r"storage order"):
        plan_alignment(entries({"tm": flat(np.eye(4), "row_major")}, {"tm": projective}))
    with pytest.raises(ValueError) as error:
        plan_alignment(entries({"tm": flat(np.eye(4), "row_major")}, {"tm": [1, 2, 3]}))
    assert str(error.value) == "sub 10, group 1: meta.prop.tm of the sub must be 16 finite numbers, got [1, 2, 3]"
    with pytest.raises(ValueError, match=r"^pointcloud 1 \(group\) meta.prop.tm does not fit layout row_major "
                                         r"\(it is stored column_major\)$"):
        plan_alignment(entries({"tm": flat(SHIFT, "column_major")}, {"tm": flat(SHIFT, "row_major")}),
                       layout="row_major")
    sub = item(10, "sub", 1, tm=flat(SHIFT, "row_major"))["attributes"]
    with pytest.raises(ValueError, match=r"^pointcloud 10: its group 1 was not found$"):
        plan_alignment([(sub, None)])


def test_check_world_names_the_compose_that_matches():
    group_tm = rigid(0.3, 0, 0, (1000, 2000, 30))
    group_wtm = rigid(0.3, 0, 0, (1000, 2000, 31.5))  # e.g. the level's elevation is in the world matrix
    sub_tm = rigid(1.0, 0, 0, (4, 5, 1.5))
    records, _ = plan_alignment(entries({"tm": flat(group_tm, "row_major"), "wtm": flat(group_wtm, "row_major")},
                                        {"tm": flat(sub_tm, "row_major"), "wtm": flat(group_wtm @ sub_tm, "row_major")}))
    check = records[0][1]["check_world"]
    assert check["matches"] is False and check["translation_m"] == pytest.approx(1.5)
    assert check["problem"] == ("pointcloud 10 (group 1): compose group_sub differs from the sub's wtm by 1.5000 m "
                                "and 0.00000 rad; compose: group_world_sub matches it")
    records, _ = plan_alignment(entries({"tm": flat(group_tm, "row_major"), "wtm": flat(group_wtm, "row_major")},
                                        {"tm": flat(sub_tm, "row_major"), "wtm": flat(group_wtm @ sub_tm, "row_major")}),
                                compose_mode="group_world_sub")
    assert records[0][1]["check_world"] == {"translation_m": 0.0, "rotation_rad": 0.0, "matches": True}


# --- end to end: a capture of one group and three subs, stored in either order --------------------------

WORLD = np.random.default_rng(5).uniform([-20, -15, 0], [20, 15, 8], (3000, 3))
GROUP = rigid(math.radians(25), 0, 0, (350_000.0, 4_000_000.0, 48.0))
SUBS = [rigid(math.radians(a), math.radians(t), 0, p)
        for a, t, p in ((0, 0, (-5, -3, 1.5)), (100, 2, (6, 2, 1.6)), (-150, -1, (0, 9, 1.4)))]


def capture(folder, layout, world_points_site=WORLD):
    """Three sub files in their local frames and the listing that aligns them; returns the world points."""
    items = [item(7000, "group", None, tm=flat(GROUP, layout), wtm=flat(GROUP, layout), scale=[1, 1, 1])]
    for n, sub_tm in enumerate(SUBS):
        local = world_points_site @ np.linalg.inv(sub_tm)[:3, :3].T + np.linalg.inv(sub_tm)[:3, 3]
        make_las(folder / f"pc{7001 + n}.las", local, scale=0.0001, offset=(0, 0, 0))
        items.append(item(7001 + n, "sub", 7000, tm=flat(sub_tm, layout), wtm=flat(GROUP @ sub_tm, layout)))
    (folder / "capture.json").write_text(json.dumps({"result": {"data": items, "pagination": None}}))
    return world_points_site @ GROUP[:3, :3].T + GROUP[:3, 3]


@pytest.mark.parametrize("layout", ["row_major", "column_major"])
def test_three_subs_land_on_the_known_world_points(tmp_path, registry, layout):
    expected = capture(tmp_path, layout)
    results = run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: ["pc*.las"]
            metadata: capture.json
          - type: transform.align
            check_world: error
          - type: sink.las
            path: out/{group}_{sub}.las
          - type: sink.ply
            path: out/{capture}{sub}.ply
    """)
    assert [r.item.fields["sub"] for r in results] == ["7001", "7002", "7003"]
    for n in range(3):
        written = laspy.read(tmp_path / f"out/7000_{7001 + n}.las")
        got = np.stack([written.x, written.y, written.z], axis=1)
        assert np.abs(got - expected).max() < 0.001
        record = results[n].applied[0]["alignment"]
        assert record["layout"]["sub.tm"] == f"{layout} (detected)"
        assert record["check_world"]["matches"] is True


def test_an_item_without_cupix_metadata_is_refused_before_reading(tmp_path, registry):
    make_las(tmp_path / "a.las", [[0, 0, 0], [1, 1, 1]])
    with pytest.raises(StageError) as error:
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [a.las]
              - type: transform.align
              - type: sink.las
                path: out/{name}.las
        """)
    assert str(error.value) == ("stages[1] (transform.align): a has no Cupix metadata: read it with source.cupix, "
                                "or give source.files a `metadata` file")
    assert not (tmp_path / "out").exists()


def test_check_world_error_stops_the_run(tmp_path, registry, caplog):
    capture(tmp_path, "row_major")
    listing = json.loads((tmp_path / "capture.json").read_text())
    listing["result"]["data"][2]["attributes"]["meta"]["prop"]["wtm"][3] += 0.5  # the second sub's wtm is off
    (tmp_path / "capture.json").write_text(json.dumps(listing))
    body = """
        version: 1
        stages:
          - type: source.files
            paths: ["pc*.las"]
            metadata: capture.json
          - type: transform.align
            check_world: CHECK
          - type: sink.las
            path: out/{sub}.las
    """
    with pytest.raises(StageError, match=r"^stages\[1\] \(transform.align\): pointcloud 7002 \(group 7000\): compose "
                                         r"group_sub differs from the sub's wtm by 0.5000 m and 0.00000 rad; "
                                         r"compose: sub_world uses it as it is$"):
        run(tmp_path, registry, body.replace("CHECK", "error"))
    with caplog.at_level(logging.WARNING):
        run(tmp_path, registry, body.replace("CHECK", "warn"))
    assert "pointcloud 7002 (group 7000): compose group_sub differs" in caplog.text


def test_extra_matrix_is_applied_after_alignment(tmp_path, registry):
    expected = capture(tmp_path, "row_major")
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: ["pc7001.las"]
            metadata: capture.json
          - type: transform.align
            extra: [[1, 0, 0, -350000], [0, 1, 0, -4000000], [0, 0, 1, 0], [0, 0, 0, 1]]
          - type: sink.las
            path: out/{sub}.las
    """)
    written = laspy.read(tmp_path / "out/7001.las")
    assert np.abs(written.x - (expected[:, 0] - 350_000)).max() < 0.001


def test_files_match_subs_by_name_original_name_or_id(tmp_path):
    listing = Listing([item(1, "group"), item(2, "sub", 1), item(3, "sub", 1)])
    listing.by_id["3"]["meta"]["prop"]["original_file_name"] = "north wing.e57"
    assert match_file(listing, tmp_path / "pc2.las")["id"] == "2"  # the sub's name
    assert match_file(listing, tmp_path / "north wing.e57")["id"] == "3"  # the uploaded file's name
    assert match_file(listing, tmp_path / "3_pointcloud.ply")["id"] == "3"  # the id in a cached file's name
    with pytest.raises(SourceError) as error:
        match_file(listing, tmp_path / "other.las")
    assert str(error.value) == f"{tmp_path}/other.las: no sub of the metadata match this file by name, original file name or id"
    with pytest.raises(SourceError, match=r"2 subs \(2, 3\) of the metadata match"):
        match_file(listing, tmp_path / "2-3.las")


def test_unreadable_metadata_is_one_line(tmp_path, registry):
    make_las(tmp_path / "a.las", [[0, 0, 0], [1, 1, 1]])
    (tmp_path / "capture.json").write_text('{"result": 5}')
    with pytest.raises(PipelineError) as error:
        run(tmp_path, registry, """
            version: 1
            stages:
              - type: source.files
                paths: [a.las]
                metadata: capture.json
              - type: sink.las
                path: out/{sub}.las
        """)
    assert str(error.value) == (f"{tmp_path}/capture.json: not a Cupix pointcloud listing: expected a Cupix pointcloud "
                                'listing: {"result": {"data": [...]}} or a list of items')
