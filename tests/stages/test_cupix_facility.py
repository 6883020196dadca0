"""source.cupix records its facility's georeference with each sub and in the report, and applies none of it:
the exact requests (responses), which facility a sub is taken to belong to, a facility without georeference, API
errors in one line without the token, and a whole run against the loopback stand-in."""
import json
import logging

import laspy
import numpy as np
import pytest
import responses
from responses import matchers

from pipeline.errors import ConfigError, SourceError
from stages.cupix.client import FACILITY_FIELDS, POINTCLOUD_FIELDS, Backoff, CupixClient
from stages.cupix.georeference import web_mercator
from stages.cupix.source import CupixSource
from tests.stages.test_cupix_client import BASE, TOKEN, page, pc
from tests.stages.test_cupix_loopback import capture  # noqa: F401 (a fixture)

# Cupix's own example (Project.md, "Get georeference information of a certain facility"), as it answers
DOCUMENTED = {"georeference": {"epsg_code": "4326", "alt": None, "bearing": 0, "lat": 37.401877, "lon": 127.10695,
                               "x": "14149480.950286085", "y": "4495272.281606537", "z": None},
              "bearing": 0}
RECORDED = {"facility": "sqpa2d", "from": "the listing's facility.key", "name": "Site A",
            "georeference": {"epsg_code": "4326", "x": 14149480.950286085, "y": 4495272.281606537, "z": None,
                             "lat": 37.401877, "lon": 127.10695, "alt": None, "bearing": 0.0},
            "use_georeference": True, "bearing": 0.0, "applied": False,
            "problem": "x, y are the Web-Mercator (EPSG:3857) metres of lat, lon, not coordinates of EPSG:4326"}
UNDOCUMENTED = ("Cupix does not document the frame of x, y (its own example gives epsg_code 4326 with x, y in "
                "Web-Mercator metres), so the points stay in the capture's frame: declare the frame they are in with "
                "the sinks' `crs`")


def source(tmp_path, **options):
    return CupixSource({**{o.name: o.default for o in CupixSource.options}, "base_url": BASE, "token": TOKEN,
                        "capture_id": "1234", "download_dir": str(tmp_path), "backoff": 0.0, "retries": 2, **options},
                       label="stages[0] (source.cupix)")


def in_facility(entry, key):
    entry["attributes"]["facility"] = {"id": 2848, "key": key, "name": "Site A", "type": "Facility"}
    return entry


def listing(*entries):
    responses.get(f"{BASE}/pointclouds", json=page(list(entries), 1, 1),
                  match=[matchers.query_param_matcher({"fields": POINTCLOUD_FIELDS, "capture_id": "1234",
                                                       "pointcloud_type": "all", "page": "1", "per_page": "100"})])


def facility_answer(key, attributes, status=200):
    responses.get(f"{BASE}/facilities/{key}", status=status,
                  json={"result": {"data": {"id": "2848", "type": "facility", "attributes": attributes}},
                        "session": None} if status == 200 else None,
                  match=[matchers.query_param_matcher({"fields": FACILITY_FIELDS}),
                         matchers.header_matcher({"X-CUPIX-AUTH": TOKEN})])


def test_the_listing_asks_for_each_point_clouds_facility():
    assert "facility" in POINTCLOUD_FIELDS.split(",")
    assert FACILITY_FIELDS.split(",") == ["id", "key", "name", "bearing", "use_georeference", "georeference"]


def test_web_mercator_gives_cupixs_documented_x_y_from_its_lat_lon():
    x, y = web_mercator(DOCUMENTED["georeference"]["lat"], DOCUMENTED["georeference"]["lon"])
    assert (x, y) == (float(DOCUMENTED["georeference"]["x"]), float(DOCUMENTED["georeference"]["y"]))


@responses.activate
def test_the_facility_named_by_the_listing_is_asked_once_and_recorded(tmp_path, caplog):
    listing(in_facility(pc(5), "sqpa2d"), in_facility(pc(6), "sqpa2d"), pc(7, "group"))
    facility_answer("sqpa2d", {"name": "Site A", "use_georeference": True, **DOCUMENTED})
    with caplog.at_level(logging.INFO):
        items = source(tmp_path).items()
    assert [item.metadata["cupix"]["facility"] for item in items] == [RECORDED, RECORDED]
    assert len(responses.calls) == 2  # the listing, and the facility once for both subs
    assert caplog.messages.count(
        "facility sqpa2d (Site A): georeference recorded, not applied: epsg_code 4326, origin x 14149480.950286085, "
        "y 4495272.281606537, lat 37.401877, lon 127.10695, bearing 0.0; x, y are the Web-Mercator (EPSG:3857) "
        f"metres of lat, lon, not coordinates of EPSG:4326; {UNDOCUMENTED}") == 1


@pytest.mark.parametrize("georeference", [None, {}, {"epsg_code": None, "x": None, "y": None, "lat": None}])
@responses.activate
def test_a_facility_without_georeference_is_recorded_as_absent_in_one_line(tmp_path, caplog, georeference):
    listing(in_facility(pc(5), "plain1"), pc(7, "group"))
    facility_answer("plain1", {"name": "Site B", "georeference": georeference, "use_georeference": False,
                               "bearing": 12.5})
    with caplog.at_level(logging.INFO):
        [item] = source(tmp_path).items()
    assert item.metadata["cupix"]["facility"] == {"facility": "plain1", "from": "the listing's facility.key",
                                                  "name": "Site B", "georeference": None, "use_georeference": False,
                                                  "bearing": 12.5, "applied": False}
    assert [m for m in caplog.messages if "facility" in m] == ["facility plain1 (Site B) has no georeference: none is "
                                                               "recorded"]


@responses.activate
def test_the_facility_option_names_the_facility_when_the_listing_does_not(tmp_path, caplog):
    listing(pc(5), pc(7, "group"))
    facility_answer("given1", {"name": "Site A", "use_georeference": True, **DOCUMENTED})
    [item] = source(tmp_path, facility="given1").items()
    assert item.metadata["cupix"]["facility"] == {**RECORDED, "facility": "given1", "from": "option facility"}


@responses.activate
def test_a_facility_option_that_contradicts_the_listing_is_refused(tmp_path):
    listing(in_facility(pc(5), "sqpa2d"), pc(7, "group"))
    with pytest.raises(SourceError) as error:
        source(tmp_path, facility="other1").items()
    assert str(error.value) == ("pointcloud 5 belongs to facility 'sqpa2d' (the listing's facility.key), not to "
                                "'other1' (`facility`)")


@responses.activate
def test_without_a_facility_nothing_is_asked_and_one_line_says_so(tmp_path, caplog):
    listing(pc(5), pc(6), pc(7, "group"))  # responses fails any request not registered
    with caplog.at_level(logging.INFO):
        items = source(tmp_path).items()
    assert [item.metadata["cupix"]["facility"] for item in items] == [None, None]
    assert [m for m in caplog.messages if "facility" in m] == [
        "pointcloud 5, 6: the listing names no facility, so no georeference is recorded; set `facility` to the "
        "project's key (the KEY in https://TEAM.cupix.works/pj/KEY)"]
    responses.reset()
    listing(in_facility(pc(5), "sqpa2d"), pc(7, "group"))
    [item] = source(tmp_path, facility="none").items()  # `none`: not asked
    assert item.metadata["cupix"]["facility"] is None and len(responses.calls) == 1


@pytest.mark.parametrize("status, message", [
    (404, "pointcloud 5: the georeference of its facility 'sqpa2d' cannot be read: GET /facilities/sqpa2d: not found "
          "(HTTP 404)"),
    (403, "pointcloud 5: the georeference of its facility 'sqpa2d' cannot be read: Cupix rejected the API token "
          "(HTTP 403 for GET /facilities/sqpa2d); check the token (e.g. CUPIX_API_KEY)"),
    (503, "pointcloud 5: the georeference of its facility 'sqpa2d' cannot be read: GET /facilities/sqpa2d failed after "
          "3 attempts: last HTTP 503"),
])
def test_api_errors_are_one_line_naming_the_sub_and_the_facility(tmp_path, status, message):
    with responses.RequestsMock() as mocked:
        mocked.get(f"{BASE}/pointclouds", json=page([in_facility(pc(5), "sqpa2d"), pc(7, "group")], 1, 1))
        mocked.get(f"{BASE}/facilities/sqpa2d", status=status, body=f"denied for {TOKEN}")
        with pytest.raises(SourceError) as error:
            source(tmp_path).items()
        assert str(error.value) == message and TOKEN not in str(error.value)
        assert len(mocked.calls) == (1 + 3 if status == 503 else 2)  # 503 retried: `retries` 2


@responses.activate
def test_a_facility_answer_of_the_wrong_shape_is_one_line(tmp_path):
    client = CupixClient(BASE, TOKEN, backoff=Backoff(sleep=lambda s: None))
    responses.get(f"{BASE}/facilities/k1", json={"result": {"data": [1, 2]}})
    with pytest.raises(SourceError) as error:
        client.facility("k1")
    assert str(error.value) == "GET /facilities/k1: expected result.data to be one facility (a mapping), got a list"


@responses.activate
def test_a_facility_key_is_one_path_segment(tmp_path):
    client = CupixClient(BASE, TOKEN)
    responses.get(f"{BASE}/facilities/a%2F..%2Fb%3Fx", json={"result": {"data": {"attributes": {"name": "odd"}}}})
    assert client.facility("a/../b?x") == {"name": "odd"}


def test_a_facility_option_that_is_not_a_key_is_refused_in_one_line(tmp_path, registry):
    from pipeline import config
    from tests.conftest import write_config
    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.cupix
            base_url: https://acme.cupix.works/api/v1
            token: tok-123
            capture_id: 1234
            facility: "site a"
          - type: sink.las
            path: out/{sub}.las
    """)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry)
    assert error.value.problems == [f"{path}:7: stages[0] (source.cupix) > facility: expected a facility key (the KEY "
                                    "in https://TEAM.cupix.works/pj/KEY) or none, got 'site a'"]


def test_a_run_records_the_georeference_in_the_report_and_moves_no_point(tmp_path, capture):
    """Against the loopback stand-in: the facility named by the listing, asked with the token on the API host
    only; the report's first step of each item is the record; the points land where the alignment puts them."""
    from tests.cupix_stand_in import CupixStandIn
    from tests.stages.test_cupix_loopback import SUBS, TOKEN as LOOPBACK_TOKEN, config, pipeline, world_points
    items, files = capture
    for entry in items:
        entry["attributes"]["facility"] = {"id": 2848, "key": "sqpa2d", "type": "Facility"}
    details = {"sqpa2d": {"id": 2848, "key": "sqpa2d", "name": "Site A", "use_georeference": True, **DOCUMENTED}}
    with CupixStandIn(items, files, token=LOOPBACK_TOKEN, facility_details=details) as stand_in:
        done = pipeline("run", config(tmp_path, stand_in), "--report", tmp_path / "run.json")
    assert done.returncode == 0, done.stderr
    report = (tmp_path / "run.json").read_text()
    assert LOOPBACK_TOKEN not in done.stderr + done.stdout + report
    asked = [r for r in stand_in.api_requests() if r.path.startswith("/api/v1/facilities")]
    assert [(r.path, r.query, r.headers["x-cupix-auth"]) for r in asked] == [
        ("/api/v1/facilities/sqpa2d", {"fields": [FACILITY_FIELDS]}, LOOPBACK_TOKEN)]
    assert done.stderr.count("facility sqpa2d (Site A): georeference recorded, not applied") == 1
    for entry in json.loads(report)["items"]:
        first, align = entry["applied"][:2]
        assert first == {"stage": "stages[0] (source.cupix, tag cupix)",
                         "facility": {**RECORDED, "name": "Site A"}}
        assert align["alignment"]["group"] == "5310"
    for sub_id in SUBS:
        written = laspy.read(tmp_path / f"out/{sub_id}.las")
        got = np.stack([written.x, written.y, written.z], axis=1)
        assert np.abs(got - world_points()).max() < 0.001, sub_id
