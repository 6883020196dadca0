"""source.cupix against misbehaving servers (the loopback stand-in): listings that do not end, redirects
that go nowhere, servers that trickle; every failure ends, quickly, in one line naming what failed."""
import os
import time

import pytest

from stages.cupix.client import Backoff, CupixClient, CupixError
from stages.cupix.download import Cache, Downloader
from tests.cupix_stand_in import CupixStandIn, Faults
from tests.stages.test_cupix_loopback import TOKEN, capture, config, pipeline  # noqa: F401 (a fixture)


def test_a_listing_that_never_ends_stops_with_one_line(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(endless_pages=True)) as stand_in:
        started = time.monotonic()
        done = pipeline("run", config(tmp_path, stand_in))
        listing = [r for r in stand_in.api_requests() if r.path == "/api/v1/pointclouds"]
    assert done.returncode == 1
    assert done.stderr == ("error: GET /pointclouds: page 2 adds no new item (its 2 were all listed before) and "
                           "points to page 3: the listing does not end\n")
    assert len(listing) == 2 and time.monotonic() - started < 10


def run_with(tmp_path, capture, faults, *args):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=faults) as stand_in:
        done = pipeline("run", "-v", *args, config(tmp_path, stand_in))
    assert TOKEN not in done.stderr and "X-Signature" not in done.stderr
    return done, stand_in


@pytest.mark.parametrize("faults, message", [
    (Faults(storage_redirect={"5311": "loop"}),
     "storage download from /pointclouds/5311/download: the storage redirected more than 10 times (a redirect loop)"),
    (Faults(storage_redirect={"5311": "ftp"}),
     "storage download from /pointclouds/5311/download: the storage redirected to a link that is refused: its "
     "scheme is 'ftp', not http(s)"),
    (Faults(location={"5311": "ftp"}),
     "GET /pointclouds/5311/download: the download link is refused: its scheme is 'ftp', not http(s)"),
    (Faults(location={"5311": "javascript"}),
     "GET /pointclouds/5311/download: the download link is refused: its scheme is 'javascript', not http(s)"),
], ids=["storage-loop", "storage-to-ftp", "ftp-link", "javascript-link"])
def test_redirects_that_go_nowhere_are_one_line(tmp_path, capture, faults, message):
    done, stand_in = run_with(tmp_path, capture, faults)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # -v: threads may log after it
    assert errors == [f"error: pointcloud 5311 (scan one.las): {message}"]
    assert len(stand_in.storage_requests()) <= 11 * 3


def test_a_relative_download_link_is_read_from_the_api_host_without_the_token(tmp_path, capture):
    items, files = capture
    done, stand_in = run_with(tmp_path, capture, Faults(location={"5311": "relative"}))
    assert done.returncode == 0, done.stderr
    served = [r for r in stand_in.api_requests() if r.path.startswith("/bucket/")]
    assert [r.path for r in served] == ["/bucket/5311/scan%20one.las"]
    assert "x-cupix-auth" not in served[0].headers
    assert (tmp_path / "cache/5311_scan one.las").read_bytes() == files["5311"][1]


def in_time(call, seconds=10):
    """What `call()` returns or raises, run in a thread; fails the test if it takes over `seconds`."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except Exception as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s"
    return outcome, time.monotonic() - started


def test_a_trickling_api_times_out_in_one_line(capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(api_trickle=0.05)) as stand_in:
        client = CupixClient(stand_in.base_url, TOKEN, timeout=1, retries=1, backoff=Backoff(base=0.01))
        outcome, seconds = in_time(lambda: client.pointcloud("5310"))
    assert str(outcome["error"]) == "GET /pointclouds/5310 failed after 2 attempts: last timeout (no complete answer " \
                                    "within 1 s)"
    assert isinstance(outcome["error"], CupixError) and 2 <= seconds < 6


def downloader(stand_in, folder, **options):
    client = CupixClient(stand_in.base_url, TOKEN, timeout=1, retries=options.pop("retries", 2),
                         backoff=Backoff(base=0.01))
    return Downloader(client, Cache(folder), **options)


def fetch(stand_in, folder, sub_id, **options):
    sub = {**stand_in.find(sub_id)["attributes"], "id": sub_id}
    return lambda: downloader(stand_in, folder, **options).fetch(sub, f"/pointclouds/{sub_id}/download", [])


def test_a_storage_that_goes_too_slow_is_left_and_resumed(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(trickle={"5311": (20000, 0.2, 1)})) as stand_in:
        outcome, seconds = in_time(fetch(stand_in, tmp_path, "5311", min_rate=50_000, rate_window=1))
        ranges = [r.headers.get("range") for r in stand_in.storage_requests()]
    assert outcome["value"].read_bytes() == files["5311"][1]
    assert ranges[0] is None and ranges[1].startswith("bytes=200") and int(ranges[1][6:-1]) >= 20000
    assert len(ranges) == 2 and seconds < 6


def test_a_storage_that_stops_sending_is_left_after_timeout_and_resumed(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(stall={"5311": (20000, 30)})) as stand_in:
        outcome, seconds = in_time(fetch(stand_in, tmp_path, "5311", min_rate=0))
        ranges = [r.headers.get("range") for r in stand_in.storage_requests()]
    assert outcome["value"].read_bytes() == files["5311"][1]
    assert ranges == [None, "bytes=20000-"] and seconds < 6


def test_a_storage_that_always_trickles_fails_naming_the_sub(tmp_path, capture):
    items, files = capture
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(trickle={"5311": (0, 0.2, 10)})) as stand_in:
        outcome, seconds = in_time(fetch(stand_in, tmp_path, "5311", min_rate=50_000, rate_window=1, retries=1))
    assert str(outcome["error"]) == ("pointcloud 5311 (scan one.las): storage download from /pointclouds/5311/download "
                                     "failed after 2 attempts: last too slow (0.0 KB/s over 1 s; min_rate 50 KB/s)")
    assert seconds < 6
    assert [name for name in os.listdir(tmp_path) if name.startswith(".") and name != ".manifest.lock"] == []


def test_min_rate_and_its_window_are_options_of_the_stage(tmp_path, capture):
    items, files = capture
    extra = "    min_rate: 50\n    min_rate_window: 1\n    retries: 1\n"
    with CupixStandIn(items, files, token=TOKEN, faults=Faults(trickle={"5311": (0, 0.2, 10)})) as stand_in:
        body = config(tmp_path, stand_in, extra=extra).read_text().replace("    retries: 4\n", "")
        (tmp_path / "config.yaml").write_text(body.replace("timeout: 10", "timeout: 1"))
        started = time.monotonic()
        done = pipeline("run", tmp_path / "config.yaml")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == (
        "error: pointcloud 5311 (scan one.las): storage download from /pointclouds/5311/download failed after 2 "
        "attempts: last too slow (0.0 KB/s over 1 s; min_rate 50 KB/s)")
    assert time.monotonic() - started < 15


def test_requests_through_an_http_proxy_can_be_cut_too():
    from stages.cupix.watchdog import POOLS, WatchedAdapter

    adapter = WatchedAdapter()
    assert adapter.proxy_manager_for("http://127.0.0.1:3128").pool_classes_by_scheme == POOLS
    assert adapter.poolmanager.pool_classes_by_scheme == POOLS
