"""Edge cases found in review: empty and BOM text files, PLY offsets read back, float colours, merged LAS
layouts, long names, folders in the way, multi-line library errors."""
import laspy
import numpy as np
import pytest

from pipeline.errors import PipelineError, SinkError
from pipeline.model import safe_name
from tests.conftest import make_las, ply_run, run
from tests.plyfile_plain import read_plain_ply


def test_zero_point_text_files_give_valid_empty_outputs(tmp_path, registry):
    (tmp_path / "empty.pts").write_text("0\n")
    (tmp_path / "header.xyz").write_text("X Y Z\n")
    results = run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [empty.pts, header.xyz]
          - type: sink.las
            path: out/{name}.las
          - type: sink.ply
            path: out/{name}.ply
    """)
    assert [r.points_out for r in results] == [0, 0]
    for stem in ("empty", "header"):
        assert len(laspy.read(tmp_path / f"out/{stem}.las").points) == 0
        assert len(read_plain_ply(tmp_path / f"out/{stem}.ply")) == 0


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path, registry):
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfX,Y,Z,Intensity\r\n1.5,2,3,10\r\n4,5,6.25,20\r\n")
    ply = read_plain_ply(ply_run(tmp_path, registry, "excel.csv"))
    assert ply["x"].tolist() == [1.5, 4.0] and ply["z"].tolist() == [3.0, 6.25]
    assert ply["intensity"].tolist() == [10, 20]


def test_a_ply_written_with_an_offset_reads_back_in_place(tmp_path, registry):
    xyz = np.array([[500_000.125, 4_000_000.5, 50.25], [500_010.0, 4_000_020.0, 51.0]])
    make_las(tmp_path / "survey.las", xyz, scale=0.001)
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [survey.las]
          - type: sink.ply
            path: shifted/{name}.ply
            offset: auto
    """)
    header = (tmp_path / "shifted/survey.ply").read_bytes().split(b"end_header")[0].decode()
    assert "comment offset 500000.0 4000000.0 50.0\n" in header and "property float x\n" in header
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: [shifted/survey.ply]
          - type: sink.las
            path: back/{name}.las
    """)
    back = laspy.read(tmp_path / "back/survey.las")
    assert np.abs(np.stack([back.x, back.y, back.z], axis=1) - xyz).max() <= 0.0005


@pytest.mark.parametrize("values, expected", [([0.2, 0.5, 1.0], [51, 128, 255]), ([0.0, 12.0, 255.0], [0, 12, 255])])
def test_float_colours_become_uchar(tmp_path, registry, values, expected):
    lines = "".join(f"{i} 0 0 {v} {v} {v}\n" for i, v in enumerate(values))
    (tmp_path / "c.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                    "property float z\nproperty float red\nproperty float green\nproperty float blue\n"
                                    f"end_header\n{lines}")
    assert read_plain_ply(ply_run(tmp_path, registry, "c.ply"))["red"].tolist() == expected


def test_float_colours_that_are_not_colours_are_refused(tmp_path, registry):
    (tmp_path / "c.ply").write_text("ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nproperty float y\n"
                                    "property float z\nproperty float red\nend_header\n0 0 0 3.5\n")
    with pytest.raises(SinkError) as error:
        ply_run(tmp_path, registry, "c.ply")
    assert str(error.value) == ("stages[1] (sink.ply): c: red has float values 3.5..3.5 that are neither fractions "
                                "of 1 nor whole numbers up to 255")
    assert not (tmp_path / "out/c.ply").exists()


def test_merging_las_files_of_different_scales_keeps_the_finest(tmp_path, registry):
    coarse = np.array([[1000.01, 2000.02, 10.0], [1001.0, 2001.0, 11.0]])
    fine = np.array([[1500.123456, 2500.654321, 12.000001], [1500.5, 2500.5, 12.5]])
    make_las(tmp_path / "a_coarse.las", coarse, scale=0.01, offset=(0, 0, 0))
    make_las(tmp_path / "b_fine.las", fine, scale=0.000001, offset=(1500, 2500, 12))
    run(tmp_path, registry, """
        version: 1
        stages:
          - type: source.files
            paths: ["*.las"]
          - type: sink.las
            path: out/all.las
            merge: true
    """)
    merged = laspy.read(tmp_path / "out/all.las")
    assert merged.header.scales.tolist() == [0.000001] * 3
    assert merged.header.offsets.tolist() == [1000.0, 2000.0, 10.0]
    got = np.stack([merged.x, merged.y, merged.z], axis=1)
    assert np.abs(got - np.concatenate([coarse, fine])).max() <= 0.0000005


def test_long_names_are_capped_to_fit_the_file_system():
    assert len(safe_name("é" * 200).encode()) <= 150
    assert safe_name("é" * 200) == "é" * 75


def test_a_folder_where_a_file_should_go_stops_the_run_before_writing(tmp_path, registry, conformance):
    (tmp_path / "out/simple.las").mkdir(parents=True)
    with pytest.raises(PipelineError) as error:
        run(tmp_path, registry, f"""
            version: 1
            stages:
              - type: source.files
                paths: ["{conformance / 'las/simple.las'}"]
              - type: sink.ply
                path: out/{{name}}.ply
              - type: sink.las
                path: out/{{name}}.las
        """)
    assert str(error.value) == f"stages[2] (sink.las): output {tmp_path}/out/simple.las is a folder; choose a file name"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["simple.las"]


def test_library_errors_of_several_lines_print_one(capsys):
    from pipeline.cli import report_error
    from pipeline.errors import SourceError

    assert report_error(SourceError("x.e57: cannot read E57: bad\n**** Got an e57 exception\nDebug info"), False) == 1
    assert capsys.readouterr().err == "error: x.e57: cannot read E57: bad\n"


def test_e57_coordinates_that_are_not_finite_are_refused_naming_the_scan_and_point(tmp_path, monkeypatch):
    from pipeline.errors import SourceError
    from stages import e57

    class Header:
        point_fields = ["cartesianX", "cartesianY", "cartesianZ"]
        rotation, translation, point_count, node = np.array([1.0, 0, 0, 0]), np.zeros(3), 3, {}

    class FakeE57:  # what pye57 gives for a scan whose pose or points are not finite numbers
        scan_count = 2

        def get_header(self, index):
            return Header()

        def read_scan(self, index, **options):
            x = np.array([1.0, 2.0, np.nan if index == 1 else 3.0])
            return {"cartesianX": x, "cartesianY": np.zeros(3), "cartesianZ": np.zeros(3)}

    monkeypatch.setattr(e57, "open_e57", lambda path: FakeE57())
    with pytest.raises(SourceError) as error:
        with e57.read_e57(tmp_path / "scan.e57", 10) as stream:
            list(stream.chunks)
    assert str(error.value) == f"{tmp_path / 'scan.e57'}: scan 1, point 3: x nan is not a finite number"
