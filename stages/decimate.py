"""`transform.decimate`: keeps every step-th point (PDAL's filters.decimation), or a fraction of the points
picked at random, the same points on every run. Streams: one pass over each chunk, whatever its size."""
from pipeline.errors import OptionError
from pipeline.options import Option, integer, number
from pipeline.stage import Transform

GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment


def spread(indexes, seed):
    """A well-mixed 64-bit number for each point index (splitmix64 of seed and index): the same on every run
    and for every chunk size, so a fraction of the points is picked as if at random, but reproducibly.

    >>> import numpy as np
    >>> spread(np.arange(3, dtype=np.uint64), 0).tolist() == spread(np.arange(3, dtype=np.uint64), 0).tolist()
    True
    """
    import numpy as np
    with np.errstate(over="ignore"):
        z = indexes + np.uint64((seed * GOLDEN + GOLDEN) % (1 << 64))
        z ^= z >> np.uint64(30)
        z *= np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(27)
        z *= np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z


def kept_by_step(start, count, step, offset, limit):
    """The slice of a chunk of `count` points, the first being point `start` of the item, that PDAL's
    decimation keeps: points offset, offset + step, ... before point `limit` (0: no limit).

    >>> kept_by_step(0, 10, 3, 1, 0), kept_by_step(10, 10, 3, 1, 0), kept_by_step(10, 10, 3, 1, 14)
    (slice(1, 10, 3), slice(0, 10, 3), slice(0, 4, 3))
    """
    first = max(offset, start)
    first += (offset - first) % step  # the next kept index at or after `first`
    stop = start + count if not limit else min(start + count, limit)
    return slice(min(first - start, count), max(stop - start, 0), step)


class DecimateTransform(Transform):
    """Keeps every step-th point, or a reproducible random fraction of the points; every attribute kept."""

    drops_points = True
    options = (
        Option("step", integer(minimum=1), "keep every step-th point", default=1),
        Option("offset", integer(minimum=0), "index of the first point kept", default=0),
        Option("limit", integer(minimum=0), "keep no point from this index on (0: no limit)", default=0),
        Option("fraction", number(minimum=0, maximum=1), "keep this share of the points, picked at random (the "
               "same points on every run, for a given seed); instead of step, offset and limit", default=None),
        Option("seed", integer(minimum=0), "the seed of `fraction`", default=0),
    )

    @classmethod
    def check(cls, options):
        if options["fraction"] is not None and (options["step"], options["offset"], options["limit"]) != (1, 0, 0):
            raise OptionError("give either `fraction` or step, offset and limit, not both", "fraction")

    def start(self, item, info, decision=None):
        o = self.options
        if o["fraction"] is not None:
            threshold = min(int(o["fraction"] * 2.0 ** 64), (1 << 64) - 1)
        step = {"stage": self.label, **{k: o[k] for k in ("step", "offset", "limit", "fraction", "seed")
                                        if o[k] not in (None, 0) or k == "step"}}

        def function(chunks):
            import numpy as np
            done = 0
            for chunk in chunks:
                if o["fraction"] is None:
                    kept = chunk.cut(0, 0) if 0 < o["limit"] <= done else chunk.take(
                        kept_by_step(done, len(chunk), o["step"], o["offset"], o["limit"]))
                else:
                    indexes = np.arange(done, done + len(chunk), dtype=np.uint64)
                    kept = chunk.take(spread(indexes, o["seed"]) < np.uint64(threshold))
                done += len(chunk)
                yield kept

        return info.with_step(step), function
