"""Seeded mutants of the conformance corpus through `pipeline run`: no hang, no traceback, no internal error, no
numpy warning, exit 0 or 1, nothing left staged or half written, no thread, descriptor or temporary file left
behind, and bounded memory. The mutants run in one child process (tests/fuzzing.py), which reports them as JSON."""
import json
import subprocess
import sys
import time
from collections import Counter

from tests.conftest import CONFORMANCE, REPO

SEED = 20240611
COUNT = 400  # about 10 s on a 2-core machine
LIMIT = 5.0  # seconds per mutant
MEMORY_MB = 500


def test_mutants_of_the_corpus_fail_cleanly_or_not_at_all(tmp_path, conformance):
    results, progress = tmp_path / "results.json", tmp_path / "progress"
    command = [sys.executable, str(REPO / "tests/fuzzing.py"), "--corpus", str(CONFORMANCE), "--work",
               str(tmp_path / "work"), "--seed", str(SEED), "--count", str(COUNT), "--limit", str(LIMIT),
               "--results", str(results), "--progress", str(progress)]
    started = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the fuzz driver hung at mutant {progress.read_text().strip()} of seed {SEED}") from None
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        printed = (tmp_path / "work/stderr.txt").read_text(errors="replace") if (tmp_path / "work/stderr.txt").exists() else ""
        raise AssertionError(f"the fuzz driver died ({done.returncode}) at mutant {progress.read_text().strip()} of "
                             f"seed {SEED}:\n{(done.stderr + printed)[:3000]}")
    report = json.loads(results.read_text())

    failures = [r for r in report["results"] if r["problems"]]
    repeat = f"{sys.executable} tests/fuzzing.py --seed {SEED} --only {{}} --keep --work /tmp/fuzz"
    assert not failures, f"{len(failures)} of {COUNT} mutants of seed {SEED} failed badly:\n" + "\n".join(
        f"[{r['index']}] {r['description']}: {'; '.join(r['problems'])}\n    stderr: {r['stderr'].strip()[:600]!r}\n"
        f"    again: {repeat.format(r['index'])}" for r in failures[:10])

    assert report["temporary_files_left"] == []
    # the child's own peak (resource.getrusage(RUSAGE_SELF) at its end): RUSAGE_CHILDREN would be the largest
    # child of this whole pytest process, which may be another test's
    peaks = [r["max_rss_mb"] for r in report["results"]]
    first_over = next((r for r in report["results"] if r["max_rss_mb"] >= MEMORY_MB), None)
    assert report["max_rss_mb"] < MEMORY_MB, f"peak {max(peaks)} MB, first over {MEMORY_MB} MB at {first_over}"
    assert elapsed < 60, f"{COUNT} mutants took {elapsed:.0f} s"
    # the run tried what it should: every kind of file, and both outcomes
    described = Counter(r["description"].split("/")[0] for r in report["results"])
    assert set(described) >= {"las", "laz", "ply", "pts", "xyz"}, described
    codes = Counter(r["code"] for r in report["results"])
    assert codes[0] > COUNT // 10 and codes[1] > COUNT // 10, codes
