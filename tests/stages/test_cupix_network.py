"""source.cupix against misbehaving servers (the loopback stand-in): listings that do not end, redirects
that go nowhere, servers that trickle; every failure ends, quickly, in one line naming what failed."""
import time

import pytest

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
    assert done.stderr.splitlines()[-1] == f"error: pointcloud 5311 (scan one.las): {message}"
    assert len(stand_in.storage_requests()) <= 11 * 3


def test_a_relative_download_link_is_read_from_the_api_host_without_the_token(tmp_path, capture):
    items, files = capture
    done, stand_in = run_with(tmp_path, capture, Faults(location={"5311": "relative"}))
    assert done.returncode == 0, done.stderr
    served = [r for r in stand_in.api_requests() if r.path.startswith("/bucket/")]
    assert [r.path for r in served] == ["/bucket/5311/scan%20one.las"]
    assert "x-cupix-auth" not in served[0].headers
    assert (tmp_path / "cache/5311_scan one.las").read_bytes() == files["5311"][1]
