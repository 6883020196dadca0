"""Seeded mutants of the conformance corpus, each run through `pipeline run` in this one process.

The driver behind tests/test_fuzz.py, and a tool for longer hunts:

    python tests/fuzzing.py --seed 1 --count 2000 --show   # a longer run, failures listed
    python tests/fuzzing.py --seed 1 --only 137 --keep      # one mutant again, its files left in --work

Every mutant is a corpus file (LAS, LAZ, PLY ascii and binary, PTS, XYZ, or one of them in a zip) with
bytes flipped in its header or data, a cut, a range duplicated or zeroed, a count made huge, a header
number made NaN, infinite or zero, or, in text, tokens replaced by garbage, `nan` or huge numbers. Each
is run with `pipeline.cli.main(["run", config, "-q"])` into sink.las and sink.ply (and LAZ for some),
under a time limit, with file descriptor 2 captured. Mutant `i` of seed `s` is made by
`random.Random(f"{s}:{i}")` alone, so any one of them can be made again without the others.

What it checks, per mutant: the exit code is 0 or 1; stderr holds no traceback, no "internal error",
no Python warning and nothing but `error:` / `warning:` lines; the time limit was kept; no `.part`
file is left in the output folder, and none under a final name when the run failed; after the run,
no thread, file descriptor or temporary file more than before. The results go to a JSON file, with
the peak resident memory of this process after each mutant (it only grows).
"""
import argparse
import contextlib
import io
import json
import os
import random
import re
import resource
import shutil
import signal
import struct
import sys
import tempfile
import threading
import time
import traceback
import warnings
import zipfile
from pathlib import Path

# corpus files the mutants start from, by kind; small ones, so a few hundred mutants run in seconds
SOURCES = {
    "las": ["las/simple.las", "las/100-points.las", "las/1.0_1.las", "las/1.2_3.las", "las/test1_4.las",
            "las/extrabytes.las", "las/utm17.las", "las/gps-time-nan.las", "bad/bad_vlr_count.las"],
    "laz": ["laz/simple.laz"],
    "ply_ascii": ["ply/simple_text.ply", "ply/text_extradim.ply", "ply/mesh.ply", "ply/issue_2421.ply"],
    "ply_binary": ["ply/simple_binary.ply", "ply/sized_dims.ply", "ply/unsized_dims.ply"],
    "pts": ["pts/test.pts", "pts/autzen.pts", "pts/bunny_8.pts"],
    "xyz": ["xyz/data.xyz"],
}
# how often each kind is picked
WEIGHTS = {"las": 30, "laz": 14, "ply_ascii": 16, "ply_binary": 14, "pts": 10, "xyz": 8, "zip": 8}
GARBAGE = ["nan", "NaN", "inf", "-inf", "1e999", "-1e999", "1e39", "999", "-1", "65536", "4294967296",
           "99999999999999999999", "2.5", "abc", "0x10", "1,5", "+", ".", "-", "e5", "\x00", "é", "1e-400",
           "", "  ", "1 2", "#", "//"]
# LAS header fields a mutant may set: (offset, struct format)
LAS_NUMBERS = {"header size": (94, "<H"), "offset to point data": (96, "<I"), "VLR count": (100, "<I"),
               "point format": (104, "<B"), "record length": (105, "<H"), "point count": (107, "<I"),
               "x scale": (131, "<d"), "y scale": (139, "<d"), "z scale": (147, "<d"),
               "x offset": (155, "<d"), "z offset": (171, "<d"), "max x": (179, "<d"), "min z": (219, "<d"),
               "1.4 point count": (247, "<Q"), "first EVLR": (235, "<Q"), "EVLR count": (243, "<I")}
HUGE_INTEGERS = [0, 1, 255, 65535, 2 ** 31 - 1, 2 ** 32 - 1, 2 ** 63 - 1, 2 ** 64 - 1]
ODD_FLOATS = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, 1e308, -1e308, 1e-300, 1e300]


class Timeout(BaseException):
    """Raised by the alarm in the mutant that ran too long (a BaseException, so no `except Exception`
    in the code under test swallows it)."""


# --- mutations ----------------------------------------------------------------------------------------


def las_header_length(data):
    if len(data) >= 100 and data[:4] == b"LASF":
        return max(4, min(struct.unpack_from("<I", data, 96)[0], len(data)))
    return min(len(data), 375)


def ply_header_length(data):
    end = data.find(b"end_header")
    return len(data) if end < 0 else min(len(data), end + 11)


def flip_bytes(rng, data, low, high, note):
    if high <= low:
        return data, f"{note}: nothing to flip"
    data = bytearray(data)
    count = rng.choice([1, 1, 2, 3, 8])
    changes = []
    for _ in range(count):
        at = rng.randrange(low, high)
        value = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        changes.append(f"{at}={value}")
        data[at] = value
    return bytes(data), f"{note} bytes {' '.join(changes)}"


def binary_mutation(rng, data, header_length):
    """One change to a binary file: bytes of the header or the data, a cut, a duplicated or zeroed range."""
    kind = rng.choice(["header", "header", "data", "cut", "duplicate", "zero"])
    size = len(data)
    if kind == "header":
        return flip_bytes(rng, data, 0, header_length, "header")
    if kind == "data":
        return flip_bytes(rng, data, header_length, size, "data")
    if kind == "cut":
        at = rng.randrange(0, size + 1) if rng.random() < 0.3 else rng.randrange(header_length, size + 1)
        return data[:at], f"cut at byte {at} of {size}"
    start = rng.randrange(0, size)
    length = rng.randrange(1, max(2, min(size - start, 4096)))
    if kind == "duplicate":
        return data[:start + length] + data[start:start + length] + data[start + length:], \
            f"bytes {start}..{start + length} duplicated"
    return data[:start] + bytes(length) + data[start + length:], f"bytes {start}..{start + length} zeroed"


def las_mutation(rng, data):
    if rng.random() < 0.35 and len(data) >= 255:
        name = rng.choice(sorted(LAS_NUMBERS))
        offset, layout = LAS_NUMBERS[name]
        if layout == "<d":
            value = rng.choice(ODD_FLOATS)
        else:
            limit = 2 ** (8 * struct.calcsize(layout)) - 1
            value = min(limit, rng.choice(HUGE_INTEGERS + [rng.randrange(limit + 1)]))
        data = bytearray(data)
        struct.pack_into(layout, data, offset, value)
        return bytes(data), f"{name} set to {value!r}"
    return binary_mutation(rng, data, las_header_length(data))


def ply_header_mutation(rng, data):
    """A change to a PLY header's words: a huge or odd element count, another property type."""
    length = ply_header_length(data)
    header, body = data[:length].decode("ascii", "replace"), data[length:]
    lines = header.split("\n")
    choices = [i for i, line in enumerate(lines) if line.startswith(("element", "property", "format", "comment"))]
    if not choices:
        return data, "no header line to change"
    index = rng.choice(choices)
    words = lines[index].split()
    if words[0] == "element" and len(words) == 3:
        words[2] = str(rng.choice([0, 1, 2, 10 ** 6, 10 ** 9, 2 ** 32, 10 ** 20, 3]))
    elif words[0] == "property":
        types = ["char", "uchar", "short", "ushort", "int", "uint", "float", "double", "int64", "list"]
        words[-2 if words[1] != "list" else 2] = rng.choice(types)
    elif words[0] == "format":
        words[1:] = [rng.choice(["ascii", "binary_little_endian", "binary_big_endian", "binary"]), "1.0"]
    else:
        words = ["comment", "offset", rng.choice(["nan", "1e308", "1", "x"]), "0", "inf"]
    old, lines[index] = lines[index], " ".join(words)
    return "\n".join(lines).encode("ascii", "replace") + body, f"header line {index + 1} {old!r} -> {lines[index]!r}"


def text_mutation(rng, data, header_lines=0):
    """One change to a text file: tokens replaced by garbage, lines dropped, repeated or added, a cut."""
    lines = data.decode("utf-8", "replace").split("\n")
    kind = rng.choice(["token", "token", "token", "drop", "repeat", "extra", "cut", "bytes"])
    first = min(header_lines, max(len(lines) - 1, 0))
    at = rng.randrange(first, len(lines)) if len(lines) > first else 0
    if kind == "token":
        changed = []
        for _ in range(rng.choice([1, 1, 2, 4])):
            at = rng.randrange(first, len(lines)) if len(lines) > first else 0
            words = lines[at].split(" ")
            column = rng.randrange(len(words))
            words[column] = rng.choice(GARBAGE)
            lines[at] = " ".join(words)
            changed.append(f"line {at + 1} word {column + 1} -> {words[column]!r}")
        description = "; ".join(changed)
    elif kind == "drop":
        del lines[at]
        description = f"line {at + 1} dropped"
    elif kind == "repeat":
        lines.insert(at, lines[at])
        description = f"line {at + 1} repeated"
    elif kind == "extra":
        line = " ".join(rng.choice(GARBAGE + ["1", "2.5", "-3"]) for _ in range(rng.randrange(1, 9)))
        lines.insert(at, line)
        description = f"line {line!r} inserted at {at + 1}"
    elif kind == "cut":
        joined = "\n".join(lines).encode()
        cut = rng.randrange(0, len(joined) + 1)
        return joined[:cut], f"cut at byte {cut} of {len(joined)}"
    else:
        return flip_bytes(rng, data, 0, len(data), "text")
    return "\n".join(lines).encode("utf-8", "surrogateescape"), description


def zip_mutation(rng, corpus):
    """A corpus file in a zip, then the zip changed: its bytes, or a member's sizes in its headers."""
    kind = rng.choice([k for k in SOURCES if k != "laz"])
    name = rng.choice(SOURCES[kind])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(corpus / name, Path(name).name)
        if rng.random() < 0.3:
            archive.writestr("readme.txt", "Survey delivery.\n")
    data = buffer.getvalue()
    what = rng.choice(["bytes", "sizes", "cut"])
    if what == "bytes":
        data, description = flip_bytes(rng, data, 0, len(data), "zip")
    elif what == "cut":
        at = rng.randrange(len(data))
        data, description = data[:at], f"zip cut at byte {at} of {len(data)}"
    else:  # the uncompressed size in the local header (at 22) and in the central directory (at 24)
        size = rng.choice([0, 1, 10, 2 ** 31, 2 ** 32 - 1])
        data = bytearray(data)
        central = data.rfind(b"PK\x01\x02")
        struct.pack_into("<I", data, 22, size)
        if central >= 0:
            struct.pack_into("<I", data, central + 24, size)
        data, description = bytes(data), f"zip member declared as {size} bytes"
    return data, f"{name} in a zip, {description}", ".zip"


def make_mutant(corpus, seed, index):
    """Mutant `index` of `seed`: (bytes, description, file suffix, sinks, source options)."""
    rng = random.Random(f"{seed}:{index}")
    kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    if kind == "zip":
        data, description, suffix = zip_mutation(rng, corpus)
    else:
        name = rng.choice(SOURCES[kind])
        data = (corpus / name).read_bytes()
        suffix = Path(name).suffix
        if kind in ("las", "laz"):
            data, change = las_mutation(rng, data)
        elif kind == "ply_binary":
            data, change = (ply_header_mutation(rng, data) if rng.random() < 0.3
                            else binary_mutation(rng, data, ply_header_length(data)))
        elif kind == "ply_ascii":
            header_lines = data[:ply_header_length(data)].count(b"\n")
            data, change = ply_header_mutation(rng, data) if rng.random() < 0.3 else text_mutation(rng, data, header_lines)
        else:
            data, change = text_mutation(rng, data, 1 if kind == "pts" else 0)
        description = f"{name}: {change}"
    sinks = [("sink.las", ".las", {}), ("sink.ply", ".ply", {})]
    if index % 4 == 0:
        sinks.append(("sink.las", ".laz", {}))
    if index % 6 == 1:
        sinks[1] = ("sink.ply", ".ply", rng.choice([{"ascii": "true"}, {"colors": "keep"}, {"colors": "16bit"},
                                                    {"offset": "auto"}]))
    options = {"chunk_size": rng.choice([1, 7, 400, 400, 100000])}
    if index % 3 == 0:
        options["truncated"] = "read"
    if index % 5 == 2:  # moved points: the sinks choose their offsets from the header's bounds
        options["move"] = True
    description += "".join(f" ({key}: {value})" for key, value in options.items() if key != "chunk_size")
    description += "".join(f" (sink {suffix}: {extra})" for _, suffix, extra in sinks if extra)
    return data, description, suffix, sinks, options


# --- running one mutant -------------------------------------------------------------------------------


MOVE = "[[0, -1, 0, 350000.125], [1, 0, 0, 4000000.5], [0, 0, 1, 12], [0, 0, 0, 1]]"


def config_text(input_name, sinks, options):
    lines = ["version: 1", "stages:", "  - type: source.files", f"    paths: [{input_name}]"]
    lines += [f"    {key}: {value}" for key, value in options.items() if key != "move"]
    if options.get("move"):
        lines += ["  - type: transform.matrix", f"    matrix: {MOVE}"]
    for kind, suffix, extra in sinks:
        lines += [f"  - type: {kind}", f"    path: out/{{name}}{suffix}"] + [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def open_descriptors():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


ALLOWED_LINE = re.compile(r"^(error|warning): \S")


def problems_of(code, stderr, folder, sinks, escaped, timed_out):
    """What is wrong with one mutant's run, as short sentences (an empty list: nothing)."""
    found = []
    if timed_out:
        found.append("hang: the time limit was reached")
    if escaped:
        found.append(f"an exception escaped main(): {escaped}")
    if code not in (0, 1):
        found.append(f"exit code {code}")
    if "Traceback" in stderr:
        found.append("a traceback on stderr")
    if "internal error" in stderr:
        found.append("an internal error")
    if "Warning" in stderr:
        found.append("a Python warning on stderr")
    odd = [line for line in stderr.splitlines() if line.strip() and not ALLOWED_LINE.match(line)]
    if odd:
        found.append(f"stray stderr line {odd[0][:200]!r}")
    if code == 1 and sum(line.startswith("error:") for line in stderr.splitlines()) != 1:
        found.append("a failure without exactly one error line")
    out = folder / "out"
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    staged = [name for name in written if name.endswith(".part")]
    if staged:
        found.append(f"staged files left: {staged}")
    if code != 0 and [name for name in written if not name.endswith(".part")]:
        found.append(f"files under a final name after a failure: {written}")
    if code == 0:
        missing = [f"input{suffix}" for _, suffix, _ in sinks if f"input{suffix}" not in written]
        if missing:
            found.append(f"exit 0 but no {missing}")
    return found


def run_mutant(work, corpus, seed, index, limit, keep=False):
    from pipeline.cli import main
    import laspy  # noqa: F401 - imported before the count of open files: it imports pyproj, which keeps its
    # database open for the life of the process (a resource of the process, not of a run)

    data, description, suffix, sinks, options = make_mutant(corpus, seed, index)
    folder = work / f"m{index:05d}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    input_name = f"input{suffix}"
    (folder / input_name).write_bytes(data)
    config = folder / "config.yaml"
    config.write_text(config_text(input_name, sinks, options))
    threads, descriptors = threading.active_count(), open_descriptors()

    capture = open(work / "stderr.txt", "w+b")  # named, so that what a crash printed can still be read
    saved = os.dup(2)
    sys.stderr.flush()
    os.dup2(capture.fileno(), 2)
    code, escaped, timed_out = None, None, False

    def on_alarm(signum, frame):
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # every warning of every mutant, not only the first of its kind
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                code = main(["run", str(config), "-q"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except Timeout:
        timed_out = True
    except BaseException as error:  # noqa: B902 - whatever escapes is a finding
        escaped = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    finally:
        signal.signal(signal.SIGALRM, previous)
        elapsed = time.perf_counter() - started
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
    capture.seek(0)
    stderr = capture.read().decode("utf-8", "replace")
    capture.close()
    found = problems_of(code, stderr, folder, sinks, escaped, timed_out)
    if timed_out:
        time.sleep(0.5)  # let the threads of the interrupted run see it end
    if threading.active_count() > threads:
        found.append(f"threads left running: {[t.name for t in threading.enumerate()][threads:]}")
    if open_descriptors() > descriptors:
        found.append(f"{open_descriptors() - descriptors} file descriptor(s) left open")
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return {"index": index, "seed": seed, "description": description, "code": code, "stderr": stderr[-2000:],
            "seconds": round(elapsed, 3), "problems": found,
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data"
                        / "conformance")
    parser.add_argument("--work", type=Path, help="a folder for the mutants (default: a new temporary one)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--only", type=int, nargs="*", help="run only these mutant indexes")
    parser.add_argument("--limit", type=float, default=5.0, help="seconds per mutant")
    parser.add_argument("--results", type=Path, help="write the JSON results here (default: stdout)")
    parser.add_argument("--show", action="store_true", help="print each failing mutant on stderr as it comes")
    parser.add_argument("--keep", action="store_true", help="keep each mutant's folder")
    parser.add_argument("--progress", type=Path, help="write each mutant's index and description here before it "
                        "runs, so a crash of this process can be traced to it")
    args = parser.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    scratch = work / "tmp"  # the pipeline's own temporary files (unpacked zips) go here, to be counted
    scratch.mkdir(exist_ok=True)
    tempfile.tempdir = str(scratch)
    for name in ("pipeline", "stages.files", "stages.las", "stages.ply", "stages.text"):
        __import__(name)  # imported before the first mutant, so its time limit is not spent on imports
    indexes = args.only if args.only else range(args.count)
    started = time.perf_counter()
    results = []
    for index in indexes:
        if args.progress:
            args.progress.write_text(f"{index} ({make_mutant(args.corpus, args.seed, index)[1]})\n")
        result = run_mutant(work, args.corpus, args.seed, index, args.limit, args.keep)
        results.append(result)
        if args.show and result["problems"]:
            print(f"[{index}] {result['description']}: {'; '.join(result['problems'])}\n    "
                  + result["stderr"].strip().replace("\n", "\n    "), file=sys.stderr)
    leftovers = sorted(os.listdir(scratch))
    report = {"seed": args.seed, "count": len(results), "seconds": round(time.perf_counter() - started, 2),
              "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "temporary_files_left": leftovers, "results": results}
    text = json.dumps(report, indent=1)
    if args.results:
        args.results.write_text(text)
    else:
        print(text)
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
