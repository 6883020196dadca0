"""The same config and inputs give the same bytes on any day, in any folder, with any --jobs: a LAS output's
creation date is its LAS input's, else SOURCE_DATE_EPOCH's day, else unset."""
import hashlib
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import laspy
import numpy as np

from tests.conftest import CONFORMANCE, make_las, write_config

# each input under a name of its own, as {stem} names the outputs
INPUTS = {"las/simple.las": "simple.las", "laz/simple.laz": "compressed.laz", "ply/simple_binary.ply": "binary.ply",
          "ply/simple_text.ply": "text.ply", "pts/test.pts": "test.pts", "xyz/data.xyz": "data.xyz", "e57/A4.e57": "A4.e57"}
CONFIG = """
    version: 1
    stages:
      - type: source.files
        paths: [inputs/*]
      - type: sink.las
        path: out/{stem}.las
      - type: sink.las
        path: out/{stem}.laz
      - type: sink.ply
        path: out/{stem}.ply
"""
# `pipeline run` on a machine whose clock says it is another day: laspy stamps headers with date.today()
ON_ANOTHER_DAY = """
import datetime, sys
import laspy.header

class Day(datetime.date):
    @classmethod
    def today(cls):
        return cls(2031, 7, 4)

laspy.header.date = Day
from pipeline.cli import main
sys.exit(main())
"""


def prepared(folder):
    """A folder with the config and a copy of every kind of input; `dated.las` made with a known date."""
    (folder / "inputs").mkdir(parents=True)
    for name, copy in INPUTS.items():
        shutil.copy(CONFORMANCE / name, folder / "inputs" / copy)
    make_las(folder / "inputs" / "dated.las", np.random.default_rng(1).uniform(0, 100, (500, 3)) + [440_700, 3_751_200, 0])
    data = bytearray((folder / "inputs" / "dated.las").read_bytes())
    struct.pack_into("<HH", data, 90, 42, 2019)
    (folder / "inputs" / "dated.las").write_bytes(bytes(data))
    return write_config(folder, CONFIG)


def run_in(folder, *options, env=None, another_day=False):
    command = [sys.executable, "-c", ON_ANOTHER_DAY] if another_day else [sys.executable, "-m", "pipeline"]
    environment = {k: v for k, v in os.environ.items() if k != "SOURCE_DATE_EPOCH"}
    done = subprocess.run([*command, "run", "-q", *options, "config.yaml"], cwd=folder, capture_output=True,
                          text=True, env={**environment, **(env or {})}, timeout=300)
    assert done.returncode == 0, done.stderr
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "out").iterdir())}


def created(path):
    return struct.unpack_from("<HH", Path(path).read_bytes(), 90)[::-1]


def test_every_output_is_the_same_on_another_day_in_another_folder_with_other_jobs(tmp_path):
    first, second = prepared(tmp_path / "a"), prepared(tmp_path / "elsewhere" / "b")

    today = run_in(first.parent)
    other = run_in(second.parent, "--jobs", "2", another_day=True)

    assert len(today) == 3 * (len(INPUTS) + 1)
    assert today == other


def test_a_las_input_keeps_its_date_and_other_inputs_get_none_or_source_date_epoch(tmp_path):
    folder = prepared(tmp_path).parent
    run_in(folder, another_day=True)
    out = folder / "out"
    assert created(out / "dated.las") == created(out / "dated.laz") == (2019, 42)
    assert created(out / "simple.las") == created(out / "simple.laz") == (0, 0)  # unset in simple.las too
    assert created(out / "data.las") == created(out / "A4.laz") == created(out / "binary.las") == (0, 0)
    assert laspy.read(out / "dated.laz").header.creation_date.isoformat() == "2019-02-11"

    for path in out.iterdir():
        path.unlink()
    run_in(folder, env={"SOURCE_DATE_EPOCH": "1700000000"})  # 2023-11-14, day 318
    assert created(out / "dated.las") == (2019, 42)
    assert created(out / "simple.las") == (0, 0)
    assert created(out / "data.las") == created(out / "test.laz") == created(out / "text.las") == (2023, 318)


def test_a_merged_output_has_the_first_items_date(tmp_path):
    folder = prepared(tmp_path).parent
    (folder / "config.yaml").write_text("""
version: 1
stages:
  - type: source.files
    paths: [inputs/dated.las, inputs/data.xyz]
  - type: sink.las
    path: out/all.las
    merge: true
""")
    run_in(folder, another_day=True)
    assert created(folder / "out/all.las") == (2019, 42)


def test_a_source_date_epoch_that_is_not_a_number_is_one_line(tmp_path):
    folder = prepared(tmp_path).parent
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", "-q", "config.yaml"], cwd=folder,
                          capture_output=True, text=True, env={**os.environ, "SOURCE_DATE_EPOCH": "soon"})
    assert (done.returncode, done.stderr) == (
        1, "error: SOURCE_DATE_EPOCH='soon': expected seconds since 1970-01-01 (an integer)\n")
