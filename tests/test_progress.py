"""Progress display: a fake clock and a StringIO stand in for time and the terminal."""
import io

import pytest

from pipeline.progress import ConsoleProgress, Progress

CLEAR = "\r\x1b[K"


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def at(self, now):
        self.now = now
        return self


class FlushCounter(io.StringIO):
    flushes = 0

    def flush(self):
        self.flushes += 1
        super().flush()


def console(interactive, interval=None, start=1000.0):
    clock, stream = FakeClock(start), FlushCounter()
    progress = ConsoleProgress(stream, interactive=interactive, interval=interval, clock=clock)
    return progress, clock, stream


# --- non-interactive: a plain line every `interval` seconds ---------------------------------------

def test_default_intervals():
    assert ConsoleProgress(io.StringIO(), interactive=False).interval == 10.0
    assert ConsoleProgress(io.StringIO(), interactive=True).interval == 0.2
    assert ConsoleProgress(io.StringIO(), interactive=False, interval=0).interval == 0


def test_plain_line_only_every_interval():
    progress, clock, stream = console(interactive=False)
    progress.start(3)

    clock.at(1005.0)
    progress.advance(100)
    progress.item_done()
    assert stream.getvalue() == ""

    clock.at(1010.0)
    progress.advance(1900)
    assert stream.getvalue() == "progress: items 1/3 | 2.0k points | 200 points/s | ETA 0:00:20\n"

    clock.at(1015.0)
    progress.item_done()
    clock.at(1019.5)
    progress.advance(0)
    assert stream.getvalue() == "progress: items 1/3 | 2.0k points | 200 points/s | ETA 0:00:20\n"

    clock.at(1020.0)
    progress.advance(0)
    progress.finish()
    assert stream.getvalue() == ("progress: items 1/3 | 2.0k points | 200 points/s | ETA 0:00:20\n"
                                 "progress: items 2/3 | 2.0k points | 100 points/s | ETA 0:00:10\n")
    assert stream.flushes == 2


def test_plain_line_with_a_short_interval():
    progress, clock, stream = console(interactive=False, interval=1.0, start=0.0)
    progress.start(2)

    for now in (0.5, 1.0, 1.5, 2.0, 2.5):
        clock.at(now)
        progress.advance(1000)

    assert stream.getvalue() == ("progress: items 0/2 | 2.0k points | 2.0k points/s\n"
                                 "progress: items 0/2 | 4.0k points | 2.0k points/s\n")


def test_plain_line_never_uses_carriage_returns():
    progress, clock, stream = console(interactive=False, interval=0.0, start=0.0)
    progress.start(1, points=10)

    clock.at(1.0)
    progress.advance(10)
    progress.item_done()
    progress.finish()

    assert stream.getvalue() == ("progress: items 0/1 | 10 points | 10 points/s | ETA 0:00:00\n"
                                 "progress: items 1/1 | 10 points | 10 points/s | ETA 0:00:00\n")


# --- interactive: a bar redrawn in place --------------------------------------------------------

def test_interactive_bar_is_redrawn_in_place():
    progress, clock, stream = console(interactive=True, start=0.0)
    progress.start(4, points=4_000_000)

    clock.at(0.1)
    progress.advance(500_000)
    assert stream.getvalue() == ""

    clock.at(0.5)
    progress.advance(500_000)
    first = CLEAR + "[#####...............] items 0/4 | 1.0M points | 2.0M points/s | ETA 0:00:02"
    assert stream.getvalue() == first

    clock.at(0.6)
    progress.item_done()  # a finished item is always shown
    second = CLEAR + "[#####...............] items 1/4 | 1.0M points | 1.7M points/s | ETA 0:00:02"
    assert stream.getvalue() == first + second

    progress.finish()
    assert stream.getvalue() == first + second + CLEAR
    assert "\n" not in stream.getvalue()
    assert stream.flushes == 3


def test_interactive_bar_follows_items_without_a_point_total():
    progress, clock, stream = console(interactive=True, start=0.0)
    progress.start(4)

    for now in (10.0, 20.0, 30.0):
        clock.at(now)
        progress.item_done()

    assert stream.getvalue() == (
        CLEAR + "[#####...............] items 1/4 | 0 points | 0 points/s | ETA 0:00:30"
        + CLEAR + "[##########..........] items 2/4 | 0 points | 0 points/s | ETA 0:00:20"
        + CLEAR + "[###############.....] items 3/4 | 0 points | 0 points/s | ETA 0:00:10")


def test_interactive_bar_is_full_when_points_exceed_the_total():
    progress, clock, stream = console(interactive=True, start=0.0)
    progress.start(1, points=1000)

    clock.at(2.0)
    progress.advance(1500)

    assert stream.getvalue() == CLEAR + "[####################] items 0/1 | 1.5k points | 750 points/s | ETA 0:00:00"


def test_interactive_bar_with_no_items():
    progress, clock, stream = console(interactive=True, start=0.0)
    progress.start(0)

    clock.at(1.0)
    progress.advance(0)

    assert stream.getvalue() == CLEAR + "[....................] items 0/0 | 0 points | 0 points/s"


# --- the line -----------------------------------------------------------------------------------

def test_eta_from_total_points():
    progress, clock, _ = console(interactive=False, start=0.0)
    progress.start(2, points=10_000_000)

    clock.at(1.0)
    progress.advance(2500)

    assert progress.line() == "items 0/2 | 2.5k points | 2.5k points/s | ETA 1:06:39"


def test_eta_from_total_points_wins_over_items():
    progress, clock, _ = console(interactive=False, start=0.0)
    progress.start(10, points=3_000_000_000)

    clock.at(100.0)
    progress.advance(1_500_000_000)
    progress.item_done()

    assert progress.line() == "items 1/10 | 1.5G points | 15.0M points/s | ETA 0:01:40"


def test_eta_from_items_without_a_point_total():
    progress, clock, _ = console(interactive=False, start=0.0)
    progress.start(5)

    clock.at(60.0)
    progress.advance(42)
    progress.item_done()
    progress.item_done()

    assert progress.line() == "items 2/5 | 42 points | 0 points/s | ETA 0:01:30"


def test_no_eta_before_anything_is_done():
    progress, clock, _ = console(interactive=False, start=0.0)
    progress.start(3)

    clock.at(5.0)

    assert progress.line() == "items 0/3 | 0 points | 0 points/s"


@pytest.mark.parametrize("points, shown", [(0, "0"), (999, "999"), (1000, "1.0k"), (12_345, "12.3k"),
                                           (2_500_000, "2.5M"), (7_300_000_000, "7.3G")])
def test_point_counts(points, shown):
    progress, clock, _ = console(interactive=False, start=0.0)
    progress.start(1)
    clock.at(1000.0)
    progress.advance(points)

    assert progress.line().split(" | ")[1] == f"{shown} points"


# --- the null progress --------------------------------------------------------------------------

def test_null_progress_prints_nothing(capsys):
    progress = Progress()

    assert progress.start(3, points=100) is None
    assert progress.advance(50) is None
    assert progress.item_done() is None
    assert progress.finish() is None

    assert capsys.readouterr() == ("", "")


def test_console_progress_is_a_progress():
    assert isinstance(ConsoleProgress(io.StringIO(), interactive=False), Progress)
