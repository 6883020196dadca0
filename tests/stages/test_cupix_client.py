"""The Cupix client with `responses`: the exact requests sent, paging, errors, retries, the token's reach."""
import pytest
import requests
import responses
from responses import matchers

from pipeline.errors import SourceError
from stages.cupix.client import POINTCLOUD_FIELDS, Backoff, CupixClient, CupixError
from stages.cupix.download import Cache, Downloader
from stages.cupix.source import CupixSource

BASE = "https://acme.cupix.works/api/v1"
TOKEN = "tok-123"


class Sleeps(list):
    def __call__(self, seconds):
        self.append(seconds)


@pytest.fixture
def sleeps():
    return Sleeps()


@pytest.fixture
def client(sleeps):
    return CupixClient(BASE, TOKEN, timeout=5, retries=3, backoff=Backoff(base=0.5, sleep=sleeps))


def page(data, current, total):
    return {"result": {"data": data, "pagination": {"current_page": current, "total_pages": total,
                                                     "next_page": current + 1 if current < total else None}},
            "session": None}


def pc(identifier, kind="sub", parent=7, **attributes):
    return {"id": str(identifier), "type": "pointcloud",
            "attributes": {"id": identifier, "kind": kind, "parent": {"id": parent if kind == "sub" else None},
                           "state": "done", "name": f"pc{identifier}", "pointcloud_type": "uploaded",
                           "meta": {"prop": {"tm": [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]}}, **attributes}}


@responses.activate
def test_listing_sends_fields_filters_and_pages_and_follows_every_page(client):
    for number, data in ((1, [pc(1), pc(2)]), (2, [pc(2), pc(3)]), (3, [pc(7, "group")])):
        responses.get(f"{BASE}/pointclouds", json=page(data, number, 3), match=[
            matchers.query_param_matcher({"fields": POINTCLOUD_FIELDS, "capture_id": "1234",
                                          "pointcloud_type": "all", "page": str(number), "per_page": "100"}),
            matchers.header_matcher({"X-CUPIX-AUTH": TOKEN})])
    entries = client.pointclouds(capture_id="1234", pointcloud_type="all", record_id=None)
    assert [e["id"] for e in entries] == ["1", "2", "2", "3", "7"]
    assert len(responses.calls) == 3


@responses.activate
def test_null_pagination_is_one_page_and_an_empty_page_stops(client):
    responses.get(f"{BASE}/pointclouds", json={"result": {"data": [pc(1)], "pagination": None}})
    assert [e["id"] for e in client.pointclouds(capture_id="1")] == ["1"]
    responses.reset()
    responses.get(f"{BASE}/pointclouds", json={"result": {"data": [], "pagination": {"current_page": 1,
                                                                                     "total_pages": 9,
                                                                                     "next_page": 2}}})
    assert client.pointclouds(capture_id="1") == []
    assert len(responses.calls) == 1


@responses.activate
def test_retry_after_is_honoured_then_success(client, sleeps):
    responses.get(f"{BASE}/pointclouds/5", status=429, headers={"Retry-After": "7"})
    responses.get(f"{BASE}/pointclouds/5", status=503)
    responses.get(f"{BASE}/pointclouds/5", json={"result": {"data": pc(5)}})
    assert client.pointcloud("5")["id"] == "5"
    assert sleeps[0] == 7.0
    assert 0.5 <= sleeps[1] <= 1.5  # exponential backoff with jitter: base 0.5 × 2^1 × [0.5, 1.5]


@responses.activate
def test_connection_errors_and_timeouts_are_retried_then_reported(client, sleeps):
    responses.get(f"{BASE}/pointclouds/5", body=requests.ConnectionError("refused"))
    responses.get(f"{BASE}/pointclouds/5", body=requests.Timeout("slow"))
    responses.get(f"{BASE}/pointclouds/5", status=502)
    responses.get(f"{BASE}/pointclouds/5", status=500)
    with pytest.raises(CupixError) as error:
        client.pointcloud("5")
    assert str(error.value) == "GET /pointclouds/5 failed after 4 attempts: last HTTP 500"
    assert error.value.status == 500 and len(sleeps) == 3


@pytest.mark.parametrize("status, body, message", [
    (401, None, "Cupix rejected the API token (HTTP 401 for GET /pointclouds/5); check the token (e.g. CUPIX_API_KEY)"),
    (403, None, "Cupix rejected the API token (HTTP 403 for GET /pointclouds/5); check the token (e.g. CUPIX_API_KEY)"),
    (404, None, "GET /pointclouds/5: not found (HTTP 404)"),
    (400, {"result": {"code": 400, "type": "BadRequest", "reason": "fields is required", "message": "x"}},
     "GET /pointclouds/5: HTTP 400: fields is required"),
])
def test_errors_are_not_retried_and_name_the_endpoint(client, sleeps, status, body, message):
    responses.start()
    try:
        responses.get(f"{BASE}/pointclouds/5", status=status, json=body)
        with pytest.raises(CupixError) as error:
            client.pointcloud("5")
        assert str(error.value) == message and TOKEN not in str(error.value)
        assert len(responses.calls) == 1 and sleeps == []
    finally:
        responses.stop()
        responses.reset()


@responses.activate
def test_the_redirect_is_resolved_by_hand_and_storage_never_gets_the_token(client, tmp_path):
    storage = "https://bucket.s3.amazonaws.com/caps/5/scan.las?X-Amz-Signature=abc&X-Amz-Expires=60"
    responses.get(f"{BASE}/pointclouds/5/download", status=302, headers={"Location": storage},
                  match=[matchers.header_matcher({"X-CUPIX-AUTH": TOKEN})])
    responses.get(storage.split("?")[0], body=b"LASF" + b"\0" * 96, headers={"Content-Length": "100"},
                  match=[matchers.query_param_matcher({"X-Amz-Signature": "abc", "X-Amz-Expires": "60"})])
    sub = {"id": "5", "name": "scan.las", "updated_at": "t1", "meta": {"prop": {}}}
    path = Downloader(client, Cache(tmp_path)).fetch(sub, "/pointclouds/5/download", [])
    assert path.name == "5_scan.las" and path.read_bytes().startswith(b"LASF")
    storage_call = responses.calls[1].request
    assert "X-CUPIX-AUTH" not in storage_call.headers and TOKEN not in storage_call.url
    assert responses.calls[0].request.headers["X-CUPIX-AUTH"] == TOKEN


@responses.activate
def test_group_missing_from_the_listing_is_fetched(tmp_path):
    responses.get(f"{BASE}/pointclouds", json=page([pc(5, parent=7)], 1, 1))
    responses.get(f"{BASE}/pointclouds/7", json={"result": {"data": pc(7, "group")}},
                  match=[matchers.query_param_matcher({"fields": POINTCLOUD_FIELDS})])
    source = CupixSource({**{o.name: o.default for o in CupixSource.options}, "base_url": BASE, "token": TOKEN,
                          "capture_id": "1234", "download_dir": str(tmp_path)}, label="stages[0] (source.cupix)")
    [item] = source.items()
    assert item.id == "5" and item.fields == {"sub": "5", "group": "7", "capture": "1234"}
    assert item.metadata["cupix"]["group"]["id"] == "7"


@responses.activate
def test_a_sub_with_a_bad_matrix_names_both_ids(tmp_path):
    bad = pc(5, parent=7)
    bad["attributes"]["meta"]["prop"]["tm"] = [1, 0, 0]
    responses.get(f"{BASE}/pointclouds", json=page([bad, pc(7, "group")], 1, 1))
    source = CupixSource({**{o.name: o.default for o in CupixSource.options}, "base_url": BASE, "token": TOKEN,
                          "capture_id": "1234", "download_dir": str(tmp_path)})
    with pytest.raises(SourceError) as error:
        source.items()
    assert str(error.value) == "pointcloud 5 (group 7): the sub's meta.prop.tm is missing or not 16 finite numbers"


def test_the_token_never_shows_in_a_repr():
    client = CupixClient(BASE, TOKEN)
    assert TOKEN not in repr(client) and TOKEN not in repr(client.__dict__.get("session"))


def test_config_needs_a_selection_and_never_echoes_the_token(tmp_path, registry):
    from pipeline import config
    from pipeline.errors import ConfigError
    from tests.conftest import write_config

    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.cupix
            base_url: ftp://acme
            token: ${CUPIX_API_KEY}
          - type: sink.las
            path: out/{sub}.las
    """)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry, environ={"CUPIX_API_KEY": TOKEN})
    assert error.value.problems == [f"{path}:3: stages[0] (source.cupix) > capture_id: give at least one of "
                                    "capture_id, record_id, cluster_id or ids"]
    path.write_text(path.read_text().replace("ftp://acme", "https://acme").replace("${CUPIX_API_KEY}", "[1, 2]")
                    + "")
    body = path.read_text().replace("            token: [1, 2]\n", "            token: [1, 2]\n            capture_id: 12\n")
    path.write_text(body)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry, environ={})
    assert error.value.problems == [f"{path}:5: stages[0] (source.cupix) > token: invalid value (not shown: it is a secret)"]


@responses.activate
def test_an_api_redirect_is_not_followed_with_the_token(client):
    responses.get(f"{BASE}/pointclouds/5", status=302, headers={"Location": "https://elsewhere.example/steal"})
    with pytest.raises(CupixError) as error:
        client.pointcloud("5")
    assert str(error.value) == ("GET /pointclouds/5: the API answered a redirect (HTTP 302), which is not followed "
                                "with the token; check base_url")
    assert [call.request.url.split("?")[0] for call in responses.calls] == [f"{BASE}/pointclouds/5"]


def test_a_token_with_a_control_character_is_refused_without_showing_it(tmp_path, registry):
    from pipeline import config
    from pipeline.errors import ConfigError
    from tests.conftest import write_config

    path = write_config(tmp_path, """
        version: 1
        stages:
          - type: source.cupix
            base_url: https://acme.cupix.works/api/v1
            token: ${CUPIX_API_KEY}
            capture_id: ${CAPTURE}
          - type: sink.las
            path: out/{sub}.las
    """)
    with pytest.raises(ConfigError) as error:
        config.load(path, registry, environ={"CUPIX_API_KEY": "SECRET-abc\r", "CAPTURE": "1234"})
    assert error.value.problems == [f"{path}:5: stages[0] (source.cupix) > token: expected one word without spaces "
                                    "or control characters (not shown: it is a secret)"]
    loaded = config.load(path, registry, environ={"CUPIX_API_KEY": "0123", "CAPTURE": "0042"})
    assert loaded.source.options["token"] == "0123"  # digits from the environment stay as written
    assert loaded.source.options["capture_id"] == "0042"


@pytest.mark.parametrize("field", ["reason", "message"])
def test_an_error_body_holding_the_token_is_masked(client, field):
    body = {"result": {"code": 400, "type": "BadRequest", field: f"bad header X-CUPIX-AUTH={TOKEN}\nsee {TOKEN}"}}
    responses.start()
    try:
        responses.get(f"{BASE}/pointclouds/5", status=400, json=body)
        with pytest.raises(CupixError) as error:
            client.pointcloud("5")
    finally:
        responses.stop()
        responses.reset()
    assert str(error.value) == "GET /pointclouds/5: HTTP 400: bad header X-CUPIX-AUTH=*** see ***"


@responses.activate
def test_no_error_of_the_source_shows_the_token(tmp_path):
    named = pc(5, parent=7, name=f"scan {TOKEN}", pointcloud_type="3d_reconstructed", ply_uploaded_at=None)
    responses.get(f"{BASE}/pointclouds", json=page([named, pc(7, "group")], 1, 1))
    source = CupixSource({**{o.name: o.default for o in CupixSource.options}, "base_url": BASE, "token": TOKEN,
                          "capture_id": "1234", "download_dir": str(tmp_path)})
    with pytest.raises(SourceError) as error:
        source.items()
    assert TOKEN not in str(error.value) and error.value.__cause__ is None


def answers(*replies):
    """A /pointclouds listing answering `replies` in order (the last one again and again)."""
    for reply in replies:
        responses.get(f"{BASE}/pointclouds", json=reply)


def pagination(current, following, total=None):
    return {"current_page": current, "next_page": following, "total_pages": total}


@pytest.mark.parametrize("replies, message", [
    ([{"result": {"data": [pc(1)], "pagination": pagination(1, 2)}},
      {"result": {"data": [pc(2)], "pagination": pagination(2, 1)}}],
     "GET /pointclouds: next_page 1 repeats a page already read (page 2 gave it): the listing does not end"),
    ([{"result": {"data": [pc(1), pc(2)], "pagination": pagination(1, 1)}}],
     "GET /pointclouds: next_page 1 repeats a page already read (page 1 gave it): the listing does not end"),
    ([{"result": {"data": [pc(1), pc(2)], "pagination": pagination(1, 2)}},
      {"result": {"data": [pc(2), pc(1)], "pagination": pagination(2, 3)}}],
     "GET /pointclouds: page 2 adds no new item (its 2 were all listed before) and points to page 3: "
     "the listing does not end"),
    ([{"result": {"data": [pc(1)], "pagination": pagination(1, "abc")}}],
     "GET /pointclouds: page 1: next_page 'abc' is not a page number"),
    ([{"result": {"data": [pc(1)], "pagination": pagination(1, 2, total="many")}}],
     "GET /pointclouds: page 1: total_pages 'many' is not a page number"),
    ([{"result": {"data": [pc(1)], "pagination": pagination(1, True)}}],
     "GET /pointclouds: page 1: next_page True is not a page number"),
    ([{"result": [pc(1)]}], "GET /pointclouds: page 1: expected result to be a mapping, got a list"),
    ([{"result": "busy"}], "GET /pointclouds: page 1: expected result to be a mapping, got a string"),
    ([[pc(1)]], "GET /pointclouds: page 1: expected a mapping, got a list"),
    ([{"result": None}], "GET /pointclouds: page 1: expected result to be a mapping, got null"),
    ([{"result": {"data": {"id": "1"}}}], "GET /pointclouds: page 1: expected result.data to be a list, got a mapping"),
    ([{"result": {"data": "none"}}], "GET /pointclouds: page 1: expected result.data to be a list, got a string"),
    ([{"result": {"data": [pc(1), "2"]}}], "GET /pointclouds: page 1: item 2 is not a mapping (a string)"),
    ([{"result": {"data": [{"type": "pointcloud", "attributes": {"name": "x"}}]}}],
     "GET /pointclouds: page 1: item 1 has no id"),
    ([{"result": {"data": [{"id": [1], "type": "pointcloud"}]}}], "GET /pointclouds: page 1: item 1 has no id"),
    ([{"result": {"data": [{"id": 1, "attributes": ["x"]}]}}],
     "GET /pointclouds: page 1: item 1's attributes are not a mapping (a list)"),
    ([{"result": {"data": [pc(1)], "pagination": "next"}}],
     "GET /pointclouds: page 1: expected result.pagination to be a mapping or null, got a string"),
], ids=["repeated-page", "next-is-itself", "no-new-id", "next-page-abc", "total-pages-text", "next-page-bool",
        "result-list", "result-string", "reply-list", "result-null", "data-mapping", "data-string", "item-string",
        "item-without-id", "id-a-list", "attributes-list", "pagination-string"])
def test_a_listing_that_does_not_end_or_has_the_wrong_shape_is_one_line(client, replies, message):
    responses.start()
    try:
        answers(*replies)
        with pytest.raises(CupixError) as error:
            client.pointclouds(capture_id="1")
        assert str(error.value) == message
        assert len(responses.calls) <= 2
    finally:
        responses.stop()
        responses.reset()


@responses.activate
def test_next_page_as_digits_is_followed_and_a_repeated_item_on_the_last_page_is_fine(client):
    answers({"result": {"data": [pc(1), pc(2)], "pagination": pagination("1", "2", "2")}},
            {"result": {"data": [pc(2)], "pagination": pagination(2, None, 2)}})
    assert [e["id"] for e in client.pointclouds(capture_id="1")] == ["1", "2", "2"]


@pytest.mark.parametrize("reply, message", [
    ({"result": {"data": [pc(7)]}}, "GET /pointclouds/7: expected result.data to be one item (a mapping), got a list"),
    ({"result": "x"}, "GET /pointclouds/7: expected result to be a mapping, got a string"),
    ([1], "GET /pointclouds/7: expected a mapping, got a list"),
    ({"result": {"data": {"type": "pointcloud"}}}, "GET /pointclouds/7: the item has no id"),
])
def test_one_item_of_the_wrong_shape_is_one_line(client, reply, message):
    responses.start()
    try:
        responses.get(f"{BASE}/pointclouds/7", json=reply)
        with pytest.raises(CupixError) as error:
            client.pointcloud("7")
        assert str(error.value) == message
    finally:
        responses.stop()
        responses.reset()


@responses.activate
def test_a_sub_whose_meta_is_not_a_mapping_is_named(tmp_path):
    odd = pc(5, parent=7)
    odd["attributes"]["meta"] = "none"
    responses.get(f"{BASE}/pointclouds", json=page([odd, pc(7, "group")], 1, 1))
    source = CupixSource({**{o.name: o.default for o in CupixSource.options}, "base_url": BASE, "token": TOKEN,
                          "capture_id": "1234", "download_dir": str(tmp_path)})
    with pytest.raises(SourceError) as error:
        source.items()
    assert str(error.value) == "pointcloud 5 (group 7): the sub's meta.prop.tm is missing or not 16 finite numbers"


@pytest.mark.parametrize("location, expected", [
    ("/files/5/scan.las?sig=1", "https://acme.cupix.works/files/5/scan.las?sig=1"),
    ("scan.las?sig=1", "https://acme.cupix.works/api/v1/pointclouds/5/scan.las?sig=1"),
    ("https://bucket.example/5/scan.las?sig=1", "https://bucket.example/5/scan.las?sig=1"),
])
def test_a_relative_download_link_is_resolved_against_the_api_url(client, location, expected):
    responses.start()
    try:
        responses.get(f"{BASE}/pointclouds/5/download", status=302, headers={"Location": location})
        assert client.download_location("/pointclouds/5/download") == expected
    finally:
        responses.stop()
        responses.reset()


@pytest.mark.parametrize("location, problem", [
    ("ftp://files.example/5.las?sig=SECRET", "its scheme is 'ftp', not http(s)"),
    ("file:///etc/passwd", "its scheme is 'file', not http(s)"), ("data:,hello", "its scheme is 'data', not http(s)"),
    ("https://:443/5.las?sig=SECRET", "it has no host")])
def test_a_download_link_that_is_not_http_is_refused_without_showing_it(client, location, problem):
    responses.start()
    try:
        responses.get(f"{BASE}/pointclouds/5/download", status=302, headers={"Location": location})
        with pytest.raises(CupixError) as error:
            client.download_location("/pointclouds/5/download")
    finally:
        responses.stop()
        responses.reset()
    assert str(error.value) == f"GET /pointclouds/5/download: the download link is refused: {problem}"
