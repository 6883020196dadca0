"""The overlap picture: every item's outline seen from above (the convex hull of its thinned points, in its own
colour, named at its middle), and each pair with enough overlap joined by a line from middle to middle,
coloured by its larger median distance (green at 0, yellow at the tolerance, red at twice the tolerance and
beyond) and labelled with it in millimetres; a pair that disagrees (by its distances or by ICP's motion) has a
red edge and a red label. Drawn with the helpers of sink.preview.
"""
import math

import numpy as np

from ..preview import ITEM_COLOURS, PROBLEM, Panel, Sheet, compose, ramp, text_size, write_png
from .pairs import AGREES, DISAGREES, TOO_LITTLE, verdict_counts, worst_median

SIZE = 1200  # pixels of the plot's longer side
MARGIN = 0.06  # of the site's longer side, around it
DISTANCE_COLOURS = ((26, 152, 80), (255, 210, 0), (215, 25, 28))  # 0, tolerance, twice the tolerance


def hull(points):
    """The convex hull of 2-D points (Andrew's monotone chain), counter-clockwise, as a list of (x, y)."""
    points = sorted(set(map(tuple, points)))
    if len(points) < 3:
        return points

    def half(ordered):
        chain = []
        for p in ordered:
            while len(chain) >= 2 and ((chain[-1][0] - chain[-2][0]) * (p[1] - chain[-2][1])
                                       - (chain[-1][1] - chain[-2][1]) * (p[0] - chain[-2][0])) <= 0:
                chain.pop()
            chain.append(p)
        return chain[:-1]

    return half(points) + half(points[::-1])


def row_ends(cells):
    """The first and last of each row's cells ((n, 2) int: column, row): the only ones whose corners can be on
    the hull of them all, since every other cell of a row lies between those two.

    >>> row_ends(np.array([[3, 0], [1, 0], [2, 0], [5, 1]])).tolist()
    [[1, 0], [3, 0], [5, 1]]
    """
    order = np.lexsort((cells[:, 0], cells[:, 1]))
    cells = cells[order]
    starts = np.flatnonzero(np.r_[True, cells[1:, 1] != cells[:-1, 1]])
    ends = np.r_[starts[1:], len(cells)] - 1
    return np.unique(np.concatenate([cells[starts], cells[ends]]), axis=0)


def distance_colour(median, tolerance):
    table = ramp(DISTANCE_COLOURS)
    return tuple(int(v) for v in table[min(255, round(255 * median / (2 * tolerance)))][:3])


def label_place(ends, wide, high, taken):
    """Where a line's label goes: the point along it nearest its middle whose label box covers no box in `taken`
    (then taken too); the middle when there is none."""
    (x1, y1), (x2, y2) = ends
    for t in (0.5, 0.42, 0.58, 0.34, 0.66, 0.26, 0.74):
        x, y = x1 + (x2 - x1) * t, y1 + (y2 - y1) * t
        box = (x - wide / 2, y - high / 2, x + wide / 2, y + high / 2)
        if not any(box[0] < r and l < box[2] and box[1] < b and t_ < box[3] for l, t_, r, b in taken):
            taken.append(box)
            return x, y
    return (x1 + x2) / 2, (y1 + y2) / 2


def plot_overlap(clouds, origin, pairs, tolerance, path, title):
    """Draws the picture into the PNG at `path` (clouds: pairs.Cloud in the site frame, `origin` its place in the
    points' frame; pairs: as measured, with item indexes "a" and "b"). Returns the layout (see preview.compose),
    with `items` (where each middle is drawn) and `pairs` (each line's ends and colour)."""
    from PIL import Image

    size = text_size(SIZE)
    filled = [c.local[:, :2] for c in clouds if len(c.local)]
    lows = np.min([xy.min(axis=0) for xy in filled], axis=0) if filled else np.zeros(2)
    highs = np.max([xy.max(axis=0) for xy in filled], axis=0) if filled else np.ones(2)
    margin = MARGIN * max(float((highs - lows).max()), 1.0)
    lows, highs = lows - margin, highs + margin
    resolution = float((highs - lows).max()) / SIZE
    width, height = (math.ceil(float(v) / resolution) for v in highs - lows)
    panel = Panel("", 0, 1, 2, False, float(lows[0] + origin[0]), float(lows[1] + origin[1]), 0.0, resolution,
                  width, height)

    top = lows[1] + height * resolution

    def pixel(xy):
        return float(xy[0] - lows[0]) / resolution, float(top - xy[1]) / resolution

    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    sheet = Sheet(image, size)
    overlay = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    shade = Sheet(overlay, size)
    colours = [ITEM_COLOURS[number % len(ITEM_COLOURS)] for number in range(len(clouds))]
    middles, outlines = [], []
    for cloud, colour in zip(clouds, colours):
        if not len(cloud.local):
            middles.append(None)
            outlines.append([])
            continue
        cells = row_ends(np.floor((cloud.local[:, :2] - lows) / resolution).astype(np.int64))
        corners = np.concatenate([cells, cells + [1, 0], cells + [0, 1], cells + [1, 1]]) * resolution + lows
        outline = [pixel(p) for p in hull(corners.tolist())]
        outlines.append(outline)
        middles.append(pixel(cloud.local[:, :2].mean(axis=0)))
        shade.draw.polygon(outline, fill=colour + (40,))
    image.alpha_composite(overlay)
    for outline, colour in zip(outlines, colours):
        if outline:
            sheet.draw.line(outline + outline[:1], fill=colour + (255,), width=4, joint="curve")
    drawn = []
    joined = sorted((p for p in pairs if p["verdict"] != TOO_LITTLE), key=worst_median)  # the worst drawn last
    for pair in joined:
        ends = [middles[pair["a"]], middles[pair["b"]]]
        colour = distance_colour(worst_median(pair), tolerance)
        sheet.draw.line(ends, fill=PROBLEM if pair["verdict"] == DISAGREES else (255, 255, 255, 255), width=13)
        sheet.draw.line(ends, fill=colour + (255,), width=7)
        drawn.append({"first": pair["first"], "second": pair["second"], "ends": ends, "colour": list(colour),
                      "verdict": pair["verdict"]})
    radius = max(5, size // 3)
    taken = [(x - radius, y - radius, x + radius, y + radius) for x, y in filter(None, middles)]
    for pair, line in zip(joined, drawn):
        label = f"{worst_median(pair) * 1000:.1f} mm"
        wide, high = sheet.measure(label, size), sheet.line_height(size)
        at = label_place(line["ends"], wide, high, taken)
        line["label"] = {"text": label, "box": [at[0] - wide / 2, at[1] - high / 2, wide, high]}
        fill = PROBLEM if pair["verdict"] == DISAGREES else (30, 30, 30, 255)
        sheet.text(at, label, size, fill=fill, anchor="mm")
    for cloud, middle, colour in zip(clouds, middles, colours):
        if middle is not None:
            x, y = middle
            sheet.draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour + (255,),
                               outline=(30, 30, 30, 255), width=2)
            sheet.text((x, y - radius - 2), cloud.name, size, anchor="md")

    millimetres = tolerance * 1000
    legend = [(cloud.name, colour) for cloud, colour in zip(clouds, colours)]
    legend += [(f"median {v * millimetres:g} mm{label}", distance_colour(v * tolerance, tolerance))
               for v, label in ((0, ""), (1, " (tolerance)"), (2, " or more"))]
    legend += [("red edge: the pair disagrees", PROBLEM[:3])]
    counts = verdict_counts(pairs)
    subtitle = (f"{len(clouds)} items, {len(pairs)} pairs: {counts[AGREES]} agree, {counts[DISAGREES]} disagree, "
                f"{counts[TOO_LITTLE]} with too little overlap (not joined); lines: median distance")
    notes = [(f"{p['first']} and {p['second']} disagree: median {worst_median(p) * 1000:.1f} mm, ICP moves "
              f"{p['second']} by {np.linalg.norm(p['icp']['translation']) * 1000:.1f} mm and "
              f"{p['icp']['rotation_degrees']:.2f}°", PROBLEM) for p in pairs if p["verdict"] == DISAGREES]
    layer, layout = compose(title, subtitle, [panel], legend=("items; pairs by median distance", legend), notes=notes,
                            size=size)
    left, upper = layout["panels"][0]["box"][:2]
    layout["items"] = [{"name": c.name, "at": None if m is None else [left + m[0], upper + m[1]], "colour": list(col)}
                       for c, m, col in zip(clouds, middles, colours)]
    for line in drawn:  # in the picture's pixels
        line["ends"] = [[left + x, upper + y] for x, y in line["ends"]]
        x, y, w, h = line["label"]["box"]
        line["label"]["box"] = [left + x, upper + y, w, h]
    layout["pairs"] = drawn
    pixels = np.asarray(image)
    write_png(path, layer, [(layout["panels"][0]["box"], lambda start, stop: pixels[start:stop])], layout)
    return layout
