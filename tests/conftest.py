import datetime
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import laspy
import numpy as np
import pytest

from pipeline.registry import Registry

REPO = Path(__file__).resolve().parents[1]
CONFORMANCE = Path(os.environ.get("CONFORMANCE_DIR", REPO.parent / "shared" / "data" / "conformance"))


@pytest.fixture(scope="session")
def conformance():
    """The shared corpus of real files (../shared/data/conformance, or $CONFORMANCE_DIR)."""
    if not (CONFORMANCE / "las").is_dir():
        pytest.fail(f"conformance corpus not found at {CONFORMANCE}; set CONFORMANCE_DIR")
    return CONFORMANCE


@pytest.fixture(scope="session")
def registry():
    return Registry.from_entry_points()


def write_config(folder, body, name="config.yaml"):
    path = Path(folder) / name
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def run(folder, registry, body, **runner_options):
    """Runs a config body written into `folder`; the item results."""
    from pipeline import config
    from pipeline.runner import Runner
    runner = Runner(config.load(write_config(folder, body), registry), registry, **runner_options)
    return runner.run(runner.plan()).items


def ply_run(folder, registry, source, options=None):
    """Runs `source` (a file in `folder`) into out/{name}.ply with these sink.ply options; the PLY's path."""
    lines = "".join(f"            {key}: {value}\n" for key, value in (options or {}).items())
    run(folder, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [{source}]
          - type: sink.ply
            path: out/{{name}}.ply
{lines}""")
    return Path(folder) / "out" / f"{source.rsplit('.', 1)[0]}.ply"


def cli(*args, cwd=None, timeout=120):
    """`python -m pipeline ARGS` in a child process."""
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def make_las(path, xyz, scale=0.001, offset=None, point_format=3, version="1.2", **fields):
    """A LAS/LAZ file with the given float coordinates and attribute arrays."""
    xyz = np.asarray(xyz, dtype=np.float64)
    header = laspy.LasHeader(version=version, point_format=point_format)
    header.scales = np.array([scale] * 3)
    header.offsets = np.floor(xyz.min(axis=0)) if offset is None else np.asarray(offset, dtype=np.float64)
    # laspy dates a new header today, and outputs keep their input's date: a fixed day keeps the outputs that
    # tests/golden records the same on any day the tests run (it is the day they were recorded)
    header.creation_date = datetime.date(2026, 11, 29)
    data = laspy.LasData(header)
    data.x, data.y, data.z = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    for name, values in fields.items():
        data[name] = values
    data.write(str(path))
    return path


def vlr_keys(header):
    """Every VLR as (user id, record id, payload); the extra-bytes VLR by its dimensions, since the
    writer refreshes the min/max statistics it carries."""
    keys = []
    for vlr in header.vlrs:
        if type(vlr).__name__ == "LasZipVlr":
            continue
        if type(vlr).__name__ == "ExtraBytesVlr":
            payload = [(s.name, s.data_type, s.options & ~0b110) for s in vlr.extra_bytes_structs]
        else:
            payload = bytes(vlr.record_data_bytes())
        keys.append((vlr.user_id, vlr.record_id, payload))
    return sorted(keys, key=repr)


def survey_las(path, xyz, rng, scale=0.001, classes=31, **fields):
    """Survey points as LAS 1.2 point format 3, with random GPS time, intensity, classification (0 to
    `classes` - 1), red and return number, and any other `fields`."""
    count = len(xyz)
    return make_las(path, xyz, scale=scale, point_format=3, gps_time=rng.uniform(0, 1e6, count),
                    intensity=rng.integers(0, 65535, count), classification=rng.integers(0, classes, count),
                    red=rng.integers(0, 65535, count), return_number=rng.integers(1, 5, count), **fields)


def through(folder, registry, stage, options, chunk_size=65536, name="in.las", sink="las", before=""):
    """Runs source.files (`name`, `chunk_size`) -> `before` (stages as YAML text) -> `stage` with `options` (YAML
    text for each) -> sink.`sink`; the item results and the output's path."""
    lines = "".join(f"            {key}: {value}\n" for key, value in options.items())
    results = run(folder, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: [{name}]
            chunk_size: {chunk_size}
{before}          - type: {stage}
{lines}          - type: sink.{sink}
            path: out/{{name}}.{sink}
    """)
    return results, folder / "out" / f"{name.rsplit('.', 1)[0]}.{sink}"


@pytest.fixture
def demo_copy(tmp_path):
    """sample_configs copied into tmp_path, so a run writes nothing into the repository."""
    target = tmp_path / "sample_configs"
    shutil.copytree(REPO / "sample_configs", target, ignore=shutil.ignore_patterns("out", "__pycache__"))
    return target


def as_array(chunks):
    """Every point of some chunks as one numpy structured array, to compare with what a test expects."""
    from pipeline.chunk import Chunk
    chunks = list(chunks)
    return Chunk.joined(chunks, chunks[0].dtype).structured() if chunks else None
