"""Every LAS and LAZ output of the corpus run, as written, in LAS 1.4 and in LAS 1.2, checked by a validator
written from the LAS specification (tests/las_validator.py): header size, offsets, record length, counts by
return, legacy counts, bounds equal to the points' extent, global encoding."""
import shutil

import laspy
import pytest

from tests.conftest import CONFORMANCE, run
from tests.las_validator import problems

INPUTS = sorted(p.relative_to(CONFORMANCE).as_posix() for folder in ("las", "laz")
                for p in (CONFORMANCE / folder).iterdir() if p.name != "1.2-no-points.las")  # claims points it lacks
FORMATS_6_TO_10 = {"las/test1_4.las"}  # these cannot be written as LAS 1.2


@pytest.mark.parametrize("version", [None, "1.4", "1.2"])
@pytest.mark.parametrize("name", INPUTS)
def test_every_output_of_the_corpus_meets_the_specification(tmp_path, registry, name, version):
    if version == "1.2" and name in FORMATS_6_TO_10:
        pytest.skip("point formats 6-10 exist only in LAS 1.4")
    shutil.copy(CONFORMANCE / name, tmp_path)
    option = f"\n            version: \"{version}\"" if version else ""
    run(tmp_path, registry, f"""
        version: 1
        stages:
          - type: source.files
            paths: ["{(CONFORMANCE / name).name}"]
          - type: sink.las
            path: out/{{name}}.las{option}
          - type: sink.las
            path: out/{{name}}.laz{option}
    """)
    for output in sorted((tmp_path / "out").iterdir()):
        assert problems(output) == [], output.name
        assert laspy.read(output).header.point_count == laspy.read(CONFORMANCE / name).header.point_count


def test_the_validator_finds_what_laspy_writes_into_las_1_4_formats_0_to_5(tmp_path):
    import numpy as np
    data = laspy.LasData(laspy.LasHeader(version="1.4", point_format=1))
    data.x, data.y, data.z = np.arange(3.0), np.zeros(3), np.zeros(3)
    data.return_number = [1, 1, 2]
    data.write(tmp_path / "plain.las")
    assert problems(tmp_path / "plain.las") == [
        "legacy point count 0 and by-return counts [0, 0, 0, 0, 0] differ from 3 and [2, 1, 0, 0, 0] (formats 0-5 "
        "must fill them)"]


def test_the_demo_outputs_meet_the_specification(demo_copy, registry):
    from pipeline import config
    from pipeline.runner import Runner
    runner = Runner(config.load(demo_copy / "demo.yaml", registry), registry)
    runner.run(runner.plan())
    written = sorted(p for p in (demo_copy.parent / "out").iterdir() if p.suffix in (".las", ".laz"))
    assert len(written) == 6
    for output in written:
        assert problems(output) == [], output.name
