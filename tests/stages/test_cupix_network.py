"""source.cupix against misbehaving servers (the loopback stand-in): listings that do not end, redirects
that go nowhere, servers that trickle; every failure ends, quickly, in one line naming what failed."""
import time

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
