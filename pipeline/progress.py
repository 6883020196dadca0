"""Progress reporting: the runner calls a Progress; the CLI chooses how it is shown."""
import time


class Progress:
    """Reports nothing (the default, and `-q`)."""

    def start(self, items, points=None):
        pass

    def advance(self, points):
        pass

    def item_done(self):
        pass

    def finish(self):
        pass


def _count(n):
    """999 -> '999', 999_950 -> '1.0M' (never '1000.0k')."""
    if n < 1000:
        return str(int(n))
    for unit, size in (("k", 1e3), ("M", 1e6), ("G", 1e9)):
        text = f"{n / size:.1f}"
        if float(text) < 1000 or unit == "G":
            return text + unit


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ConsoleProgress(Progress):
    """A bar redrawn in place on a terminal, or a plain line every `interval` seconds elsewhere."""

    def __init__(self, stream, interactive, interval=None, clock=time.monotonic):
        self.stream = stream
        self.interactive = interactive
        self.interval = interval if interval is not None else (0.2 if interactive else 10.0)
        self.clock = clock

    def start(self, items, points=None):
        self.items, self.total_points = items, points
        self.done_items, self.points = 0, 0
        self.started = self.last_shown = self.clock()

    def advance(self, points):
        self.points += points
        self._maybe_show()

    def item_done(self):
        self.done_items += 1
        self._maybe_show(force=self.interactive)

    def finish(self):
        if self.interactive:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def line(self):
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.points / elapsed
        parts = [f"items {self.done_items}/{self.items}", f"{_count(self.points)} points", f"{_count(rate)} points/s"]
        if self.total_points and rate > 0:
            parts.append(f"ETA {_duration(max(self.total_points - self.points, 0) / rate)}")
        elif self.done_items:
            parts.append(f"ETA {_duration(elapsed / self.done_items * (self.items - self.done_items))}")
        return " | ".join(parts)

    def _maybe_show(self, force=False):
        now = self.clock()
        if not force and now - self.last_shown < self.interval:
            return
        self.last_shown = now
        if self.interactive:
            fraction = self.points / self.total_points if self.total_points else self.done_items / max(self.items, 1)
            filled = int(20 * min(fraction, 1.0))
            self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (20 - filled)}] {self.line()}")
        else:
            self.stream.write(f"progress: {self.line()}\n")
        self.stream.flush()
