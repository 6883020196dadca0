"""The alignment plot: every sub of a capture drawn where `transform.align` would place it, before any point is
read or downloaded, to see at a glance whether the scans sit where they belong.

Each sub is a dot at the translation of its world matrix (the matrix transform.align applies, `extra`
included), with a short arrow along its x axis (its heading) and its name, in its group's colour; a sub whose
composed matrix disagrees with its own wtm (`check_world`) is ringed and named in red, and every problem is
written out under the plot, with the subs that could not be placed. Drawn with the helpers of sink.preview.
"""
import math
import os
import textwrap
from pathlib import Path

from ..preview import ITEM_COLOURS, PROBLEM, Panel, Sheet, compose, text_size, write_png

SIZE = 1200  # pixels of the plot's longer side, between the outermost subs
GROUP_COLOURS = tuple(c for c in ITEM_COLOURS if not (c[0] > 120 and c[1] < 60))  # no red: red marks problems
WRAP = 110  # characters a line of the notes under the plot
SMALLEST = 4.0  # metres: the least span shown, so that one sub, or subs close together, are not blown up


def plot_alignment(placed, unplaced, path, title, subtitle=None):
    """Draws the plot into a PNG at `path` (written under a temporary name, then renamed).

    `placed`: dicts with `id`, `name`, `group`, `group_name`, `matrix` (4×4, the world matrix) and `problem`
    (None, or the check_world problem); `unplaced`: dicts with `id`, `name` and `problem`.
    Returns the layout (see preview.compose), with `subs`: where each dot is drawn, in pixels, and its colour.
    """
    import numpy as np
    from PIL import Image

    size = text_size(SIZE)
    probe = Sheet(Image.new("RGBA", (1, 1)), size)
    groups = list(dict.fromkeys(sub["group"] for sub in placed))
    colour = {group: GROUP_COLOURS[number % len(GROUP_COLOURS)] for number, group in enumerate(groups)}
    matrices = [np.asarray(sub["matrix"], dtype=np.float64) for sub in placed]
    where = np.array([m[:2, 3] for m in matrices]).reshape(-1, 2)

    # the extent: every sub, with room for its arrow and name
    radius, arrow = max(5, size // 3), round(size * 3)
    names = [probe.measure(shown(sub["name"]), size) for sub in placed]
    left = right = max([arrow + radius + size] + [radius + size // 2 + w + size // 2 for w in names])
    around = arrow + size + probe.line_height(size)
    low = where.min(axis=0) if len(where) else np.zeros(2)
    spans = (where.max(axis=0) - low) if len(where) else np.zeros(2)
    resolution = max(float(spans.max()), SMALLEST) / SIZE
    panel = Panel("", 0, 1, 2, False, float(low[0]) - left * resolution, float(low[1]) - around * resolution, 0.0,
                  resolution, math.ceil(spans[0] / resolution) + left + right,
                  math.ceil(spans[1] / resolution) + 2 * around)

    image = Image.new("RGBA", (panel.width, panel.height), (0, 0, 0, 0))
    sheet = Sheet(image, size)
    top = panel.v0 + panel.height * resolution
    dots, tips = [], []
    for sub, matrix, (x, y) in zip(placed, matrices, where):
        px, py = (x - panel.u0) / resolution, (top - y) / resolution
        dots.append((px, py))
        fill = colour[sub["group"]] + (255,)
        heading = matrix[:2, 0]
        if np.hypot(*heading) > 1e-9:
            dx, dy = heading / np.hypot(*heading)
            tip = (px + dx * arrow, py - dy * arrow)
            tips.append(tip)
            sheet.draw.line([(px, py), tip], fill=(255, 255, 255, 255), width=7)
            sheet.draw.line([(px, py), tip], fill=fill, width=3)
            head, side = size * 0.8, size * 0.4
            base = (tip[0] - dx * head, tip[1] + dy * head)
            sheet.draw.polygon([tip, (base[0] - dy * side, base[1] - dx * side),
                                (base[0] + dy * side, base[1] + dx * side)], fill=fill, outline=(255, 255, 255, 255))
        else:
            tips.append((px, py))
        sheet.draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=fill, outline=(30, 30, 30, 255),
                           width=2)
        if sub["problem"]:
            ring = radius + max(4, size // 4)
            sheet.draw.ellipse([px - ring, py - ring, px + ring, py + ring], outline=PROBLEM, width=3)
    names = place_names([shown(sub["name"]) for sub in placed], dots, tips, radius, probe, size, panel)
    for sub, (at, anchor) in zip(placed, names):
        sheet.text(at, shown(sub["name"]), size, fill=PROBLEM if sub["problem"] else (30, 30, 30, 255), anchor=anchor)

    legend = [(f"group {group} ({name})" if name else f"group {group}", colour[group])
              for group, name in dict.fromkeys((sub["group"], sub.get("group_name")) for sub in placed)]
    if any(sub["problem"] for sub in placed):
        legend.append(("check_world problem (ringed)", PROBLEM[:3]))
    notes = [(f"{sub['id']} {shown(sub['name'])}: {sub['problem']}", PROBLEM) for sub in placed if sub["problem"]]
    notes += [(f"not placed: {sub['id']} {shown(sub['name'])}: {sub['problem']}", PROBLEM) for sub in unplaced]
    subtitle = subtitle or (f"{len(placed)} sub{'s' if len(placed) != 1 else ''} as transform.align places them: "
                            "dot, its position; arrow, its x axis")
    lines = [(line, fill) for text, fill in notes for line in textwrap.wrap(text, WRAP, subsequent_indent="    ")]
    layer, layout = compose(title, subtitle, [panel] if placed else [], legend=("groups", legend), notes=lines,
                            size=size)
    if layout["panels"]:
        left, upper = layout["panels"][0]["box"][:2]
        layout["subs"] = [{"id": sub["id"], "name": sub["name"], "group": sub["group"], "at": [left + px, upper + py],
                           "colour": list(colour[sub["group"]]), "problem": sub["problem"]}
                          for sub, (px, py) in zip(placed, dots)]
        layout["dot"], layout["arrow"] = radius, arrow
    pixels = np.asarray(image)
    path = Path(path)
    staged = path.with_name(f".{path.name}.part")
    try:
        write_png(staged, layer, [(place["box"], lambda start, stop: pixels[start:stop])
                                  for place in layout["panels"]], layout)
        os.replace(staged, path)
    finally:
        if staged.exists():
            staged.unlink()
    return layout


def place_names(names, dots, tips, radius, probe, size, panel):
    """Where each name goes: right of its dot, else left, above or below, the first that covers no dot, arrow or
    name already placed and stays in the panel (else right). Returns (point, Pillow anchor) per name."""
    gap, high = radius + size // 2, probe.line_height(size)
    steps = [i / 8 for i in range(9)]
    arrows = [(x + (tx - x) * t, y + (ty - y) * t) for (x, y), (tx, ty) in zip(dots, tips) for t in steps]
    taken = [(x - radius, y - radius, x + radius, y + radius) for x, y in dots]
    placed = []
    for name, (x, y) in zip(names, dots):
        wide = probe.measure(name, size)
        options = [((x + gap, y), "lm", (x + gap, y - high / 2, x + gap + wide, y + high / 2)),
                   ((x - gap, y), "rm", (x - gap - wide, y - high / 2, x - gap, y + high / 2)),
                   ((x, y - gap), "md", (x - wide / 2, y - gap - high, x + wide / 2, y - gap)),
                   ((x, y + gap), "ma", (x - wide / 2, y + gap, x + wide / 2, y + gap + high))]

        def free(box):
            left, top, right, bottom = box
            return (left >= 0 and top >= 0 and right <= panel.width and bottom <= panel.height
                    and not any(left < r and l < right and top < b and t < bottom for l, t, r, b in taken)
                    and not any(left <= px <= right and top <= py <= bottom for px, py in arrows))

        at, anchor, box = next((option for option in options if free(option[2])), options[0])
        taken.append(box)
        placed.append((at, anchor))
    return placed


def shown(name, most=40):
    name = str(name)
    return name if len(name) <= most else name[:most - 3] + "..."
