"""Config loading and validation: `pipeline.config.load` with the real built-in stages.

Every problem is one line, `FILE:LINE: stages[N] (TYPE, tag T) > OPTION: message`; the tests assert
the exact lines, so a changed message is a visible change of the user interface.
"""
import glob
import hashlib
import os
import textwrap
import time
from pathlib import Path
from types import MappingProxyType

import pytest

from pipeline.config import Config, Override, StageSpec, load
from pipeline.errors import ConfigError, UsageError
from pipeline.options import Option, text, typed
from pipeline.registry import Registry
from pipeline.stage import Source
from stages.matrix import MatrixTransform
from stages.files import FilesSource
from stages.las import LasSink

REPO = Path(__file__).resolve().parents[1]
KNOWN = f"(known: {', '.join(Registry.from_entry_points().names())})"  # every installed stage

LAS_DEFAULTS = {"version": None, "scale": None, "offset": "auto", "crs": "keep", "merge": False}
PLY_DEFAULTS = {"ascii": False, "offset": None, "colors": "auto", "crs": "keep", "merge": False}


@pytest.fixture(scope="module")
def registry():
    return Registry.from_entry_points()


def write(folder, content, name="pipeline.yaml"):
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(content), encoding="utf-8")
    return path


def problems(path, registry, **kwargs):
    with pytest.raises(ConfigError) as caught:
        load(path, registry, **kwargs)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- a valid config -----------------------------------------------------------------------------

VALID = """\
version: 1
stages:
  - type: source.files
    tag: input
    paths: ["data/*.laz", "/srv/scans/extra.ply"]
  - type: transform.matrix
    tag: align
    matrix:
      - [1, 0, 0, 10]
      - [0, 1, 0, 20]
      - [0, 0, 1, 30]
      - [0, 0, 0, 1]
  - type: sink.las
    tag: laz
    path: ../out/{name}.laz
  - type: sink.ply
    path: /abs/out/{id}.ply
    ascii: true
"""


def test_valid_config_gives_typed_stage_specs(tmp_path, registry):
    path = write(tmp_path, VALID)
    base = tmp_path.resolve()

    config = load(path, registry)

    assert isinstance(config, Config)
    assert config.path == path
    assert config.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert config.stages == (
        StageSpec(0, "source.files", "input",
                  {"paths": [str(base / "data" / "*.laz"), "/srv/scans/extra.ply"], "chunk_size": 65_536, "columns": None, "metadata": None, "truncated": "error"},
                  line=3),
        StageSpec(1, "transform.matrix", "align",
                  {"matrix": [[1, 0, 0, 10], [0, 1, 0, 20], [0, 0, 1, 30], [0, 0, 0, 1]],
                   "layout": None, "file": None, "invert": False},
                  line=6),
        StageSpec(2, "sink.las", "laz", {"path": str(base.parent / "out" / "{name}.laz"), **LAS_DEFAULTS}, line=13),
        StageSpec(3, "sink.ply", None, {**PLY_DEFAULTS, "path": "/abs/out/{id}.ply", "ascii": True}, line=16),
    )
    assert config.source is config.stages[0]
    assert config.transforms == (config.stages[1],)
    assert config.sinks == (config.stages[2], config.stages[3])
    assert [spec.label for spec in config.stages] == [
        "stages[0] (source.files, tag input)", "stages[1] (transform.matrix, tag align)",
        "stages[2] (sink.las, tag laz)", "stages[3] (sink.ply)"]
    assert [spec.kind for spec in config.stages] == ["source", "transform", "sink", "sink"]


def test_stage_options_are_read_only_and_public_without_secrets(tmp_path, registry):
    spec = load(write(tmp_path, VALID), registry).stages[3]

    assert isinstance(spec.options, MappingProxyType)
    with pytest.raises(TypeError):
        spec.options["ascii"] = False
    assert spec.secrets == frozenset()
    assert spec.public_options() == {**PLY_DEFAULTS, "path": "/abs/out/{id}.ply", "ascii": True}


def test_relative_paths_resolve_against_the_config_folder_not_the_working_directory(tmp_path, registry,
                                                                                    monkeypatch):
    write(tmp_path / "configs", """\
        version: 1
        stages:
          - type: source.files
            paths: [scans/a.laz, ~/b.laz]
          - type: sink.las
            path: out/{name}.las
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("HOME", "/home/surveyor")

    config = load(Path("..") / "configs" / "pipeline.yaml", registry)

    base = tmp_path.resolve() / "configs"
    assert config.stages[0].options["paths"] == [str(base / "scans" / "a.laz"), "/home/surveyor/b.laz"]
    assert config.stages[1].options["path"] == str(base / "out" / "{name}.las")


def test_display_name_replaces_the_path_in_problems(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
            chunk_size: 0
          - type: sink.las
            path: out/{name}.las
        """)

    assert problems(path, registry, display="site.yaml") == [
        "site.yaml:5: stages[0] (source.files) > chunk_size: expected an integer >= 1, got 0"]


# --- stage types and options --------------------------------------------------------------------

def test_unknown_stage_type_suggests_the_closest_and_lists_the_known(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - type: transform.matrx
            tag: align
            matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
          - type: filter.voxel
          - type: sink.las
            path: out/{name}.las
        """)

    assert problems(path, registry) == [
        f"{path}:5: stages[1] (transform.matrx, tag align): unknown stage type 'transform.matrx'; "
        f"did you mean 'transform.matrix'? {KNOWN}",
        f"{path}:8: stages[2] (filter.voxel): unknown stage type 'filter.voxel' {KNOWN}",
    ]


def test_missing_or_non_string_type(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - paths: [a.laz]
          - type: 3
          - sink.las
        """)

    assert problems(path, registry) == [
        f"{path}:3: stages[0]: missing 'type' (for example type: source.files)",
        f"{path}:4: stages[1]: type: expected a stage name, got 3",
        f"{path}:5: stages[2]: expected a mapping with 'type' and options, got 'sink.las'",
    ]


def test_unknown_option_suggests_the_closest(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - type: sink.ply
            tag: ply
            path: out/{name}.ply
            asci: true
            colour: red
        """)

    assert problems(path, registry) == [
        f"{path}:8: stages[1] (sink.ply, tag ply) > asci: unknown option; did you mean 'ascii'? (options: path, ascii, offset, colors, crs, merge)",
        f"{path}:9: stages[1] (sink.ply, tag ply) > colour: unknown option; did you mean 'colors'? (options: path, ascii, offset, colors, crs, merge)",
    ]


def test_misspelt_required_option_is_unknown_and_missing(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            tag: input
            pathz: [a.laz]
          - type: sink.las
            path: out/{name}.las
        """)

    assert problems(path, registry) == [
        f"{path}:5: stages[0] (source.files, tag input) > pathz: unknown option; did you mean 'paths'? "
        "(options: chunk_size, paths, columns, metadata, truncated)",
        f"{path}:3: stages[0] (source.files, tag input): missing required option 'paths' "
        "(files or glob patterns, e.g. data/*.laz)",
    ]


@pytest.mark.parametrize("value, message", [
    ("lots", "expected an integer, got a string 'lots'"),
    ('"1000"', "expected an integer, got a string '1000'"),
    ("2.5", "expected an integer, got a number 2.5"),
    ("true", "expected an integer, got a boolean True"),
    ("0", "expected an integer >= 1, got 0"),
    ("[1, 2]", "expected an integer, got a list [1, 2]"),
])
def test_chunk_size_of_the_wrong_type(tmp_path, registry, value, message):
    path = write(tmp_path, f"""\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
            chunk_size: {value}
          - type: sink.las
            path: out/{{name}}.las
        """)

    assert problems(path, registry) == [f"{path}:5: stages[0] (source.files) > chunk_size: {message}"]


def test_missing_required_option(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - type: sink.las
            tag: out
        """)

    assert problems(path, registry) == [
        f"{path}:5: stages[1] (sink.las, tag out): missing required option 'path' "
        "(output path template ending in .las or .laz, e.g. out/{name}.laz)"]


def test_bad_tag(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            tag: my input
            paths: [a.laz]
          - type: sink.las
            path: out/{name}.las
        """)

    assert problems(path, registry) == [
        f"{path}:4: stages[0] (source.files): expected a tag of letters, digits, '_' or '-', got 'my input'"]


# --- transform.matrix ---------------------------------------------------------------------------

MATRIX_CONFIG = """\
version: 1
stages:
  - type: source.files
    paths: [scan.laz]
  - type: transform.matrix
    tag: align
MATRIX
  - type: sink.las
    path: out/{name}.las
"""


def matrix_config(tmp_path, options):
    return write(tmp_path, MATRIX_CONFIG.replace("MATRIX", textwrap.indent(textwrap.dedent(options), "    ")))


def matrix_of(config):
    return MatrixTransform(config.stages[1].options).matrix.tolist()


@pytest.mark.parametrize("options, message", [
    ("matrix: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]", "expected 16 numbers, got 15"),
    ("matrix: [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]",
     "16 numbers need a layout: row_major or column_major"),
    ("matrix: [[1, 0, 0, .nan], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]",
     "element 4 is not a finite number: nan"),
    ("matrix: [[1, 0, 0, 0], [0, 1, 0, -.inf], [0, 0, 1, 0], [0, 0, 0, 1]]",
     "element 8 is not a finite number: -inf"),
    ("matrix: [[1, x, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]",
     "element 2 is not a finite number: 'x'"),
    ("matrix: [[1, 0, 0, 5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]",
     "last row must be 0 0 0 1, got 0 0 1 1"),
    ("matrix: [[1, 0, 0, 5], [0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]",
     "expected 4 rows of 4 numbers, got rows of [4, 3, 4, 4]"),
    ("matrix: identity", "expected 4 rows of 4 numbers or 16 numbers, got 'identity'"),
])
def test_bad_matrix(tmp_path, registry, options, message):
    path = matrix_config(tmp_path, options)

    assert problems(path, registry) == [f"{path}:7: stages[1] (transform.matrix, tag align) > matrix: {message}"]


def test_flat_matrix_with_a_layout(tmp_path, registry):
    path = matrix_config(tmp_path, """\
        matrix: [1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0,  10, 20, 30, 1]
        layout: column_major
        """)

    assert matrix_of(load(path, registry)) == [[1, 0, 0, 10], [0, 1, 0, 20], [0, 0, 1, 30], [0, 0, 0, 1]]


def test_layout_with_rows_is_refused(tmp_path, registry):
    path = matrix_config(tmp_path, """\
        matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        layout: row_major
        """)

    assert problems(path, registry) == [
        f"{path}:8: stages[1] (transform.matrix, tag align) > layout: "
        "a matrix of 4 rows is read as rows; `layout` is only for 16 numbers in a flat list"]


def test_bad_layout_suggests_the_closest(tmp_path, registry):
    path = matrix_config(tmp_path, """\
        matrix: [1, 0, 0, 0,  0, 1, 0, 0,  0, 0, 1, 0,  0, 0, 0, 1]
        layout: column-major
        """)

    assert problems(path, registry) == [
        f"{path}:8: stages[1] (transform.matrix, tag align) > layout: expected one of row_major, column_major, "
        "got 'column-major'; did you mean 'column_major'?"]


def test_both_matrix_and_file(tmp_path, registry):
    (tmp_path / "m.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    path = matrix_config(tmp_path, """\
        matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        file: m.txt
        """)

    assert problems(path, registry) == [
        f"{path}:7: stages[1] (transform.matrix, tag align) > matrix: give exactly one of `matrix` and `file`"]


def test_neither_matrix_nor_file(tmp_path, registry):
    path = matrix_config(tmp_path, "invert: true")

    assert problems(path, registry) == [
        f"{path}:5: stages[1] (transform.matrix, tag align) > matrix: give exactly one of `matrix` and `file`"]


def test_matrix_file_of_four_rows(tmp_path, registry):
    (tmp_path / "align").mkdir()
    (tmp_path / "align" / "m.txt").write_text("# site -> survey\n1 0 0 500000\n0 1 0 4000000.5\n\n"
                                             "0, 0, 1, -12.25\n0 0 0 1\n")
    path = matrix_config(tmp_path, "file: align/m.txt")

    config = load(path, registry)

    assert config.stages[1].options == {"file": str(tmp_path.resolve() / "align" / "m.txt"),
                                        "matrix": None, "layout": None, "invert": False}
    assert matrix_of(config) == [[1, 0, 0, 500000], [0, 1, 0, 4000000.5], [0, 0, 1, -12.25], [0, 0, 0, 1]]


def test_matrix_file_of_sixteen_numbers_inverted(tmp_path, registry):
    (tmp_path / "m.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0 5 -6 7 1\n")
    path = matrix_config(tmp_path, """\
        file: m.txt
        layout: column_major
        invert: true
        """)

    assert matrix_of(load(path, registry)) == [[1, 0, 0, -5], [0, 1, 0, 6], [0, 0, 1, -7], [0, 0, 0, 1]]


def test_missing_matrix_file(tmp_path, registry):
    path = matrix_config(tmp_path, "file: align/missing.txt")

    assert problems(path, registry) == [
        f"{path}:7: stages[1] (transform.matrix, tag align) > file: "
        f"cannot read {tmp_path.resolve() / 'align' / 'missing.txt'}: No such file or directory"]


def test_matrix_file_with_a_word(tmp_path, registry):
    (tmp_path / "m.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 zero\n0 0 0 1\n")
    path = matrix_config(tmp_path, "file: m.txt")

    assert problems(path, registry) == [
        f"{path}:7: stages[1] (transform.matrix, tag align) > file: "
        f"{tmp_path.resolve() / 'm.txt'}: could not convert string to float: 'zero'"]


# --- sinks and path templates -------------------------------------------------------------------

SINK_CONFIG = """\
version: 1
stages:
  - type: source.files
    paths: [a.laz]
  - type: SINK
    tag: out
    path: PATH
"""


@pytest.mark.parametrize("sink, template, message", [
    ("sink.las", "out/{nme}.las",
     "unknown template field {nme}; did you mean 'name'? (fields of source.files: {id} {index} {name} {stem})"),
    ("sink.las", "out/{scan}/{name}.las",
     "unknown template field {scan} (fields of source.files: {id} {index} {name} {stem})"),
    ("sink.las", "out/{name!r}.las", "bad template field in 'out/{name!r}.las': use plain fields such as {name}"),
    ("sink.las", "out/{name.las", "bad template 'out/{name.las': expected '}' before end of string"),
    ("sink.las", "out/{name}.ply", "expected a path ending in .las or .laz"),
    ("sink.las", "out/{name}", "expected a path ending in .las or .laz"),
    ("sink.ply", "out/{name}.las", "expected a path ending in .ply"),
    ("sink.ply", '""', "expected a path template, got a string ''"),
])
def test_bad_sink_path(tmp_path, registry, sink, template, message):
    path = write(tmp_path, SINK_CONFIG.replace("SINK", sink).replace("PATH", template))

    assert problems(path, registry) == [f"{path}:7: stages[1] ({sink}, tag out) > path: {message}"]


@pytest.mark.parametrize("sink, template", [
    ("sink.las", "out/{stem}_{index}.LAZ"),
    ("sink.las", "out/{id}/{name}.las"),
    ("sink.ply", "out/{name}.PLY"),
])
def test_good_sink_path(tmp_path, registry, sink, template):
    path = write(tmp_path, SINK_CONFIG.replace("SINK", sink).replace("PATH", template))

    assert load(path, registry).stages[1].options["path"] == str(tmp_path.resolve() / template)


def test_template_in_a_folder_with_braces(tmp_path, registry):
    folder = tmp_path / "site {2024}"
    path = write(folder, SINK_CONFIG.replace("SINK", "sink.las").replace("PATH", "out/{name}.las"))

    spec = load(path, registry).stages[1]

    assert spec.options["path"] == str(folder.resolve()).replace("{", "{{").replace("}", "}}") + "/out/{name}.las"
    assert spec.options["path"].format(name="scan_01") == str(folder.resolve() / "out" / "scan_01.las")


# --- stage order and tags -----------------------------------------------------------------------

def test_first_stage_must_be_a_source(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: transform.matrix
            matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
          - type: sink.las
            path: out/{name}.las
        """)

    # one mistake, one problem: without a source there are no template fields to check the sink against
    assert problems(path, registry) == [
        f"{path}:3: stages[0] (transform.matrix): the first stage must be a source, got transform.matrix"]


def test_transform_after_a_sink(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - type: sink.las
            path: out/{name}.las
          - type: transform.matrix
            tag: late
            matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        """)

    assert problems(path, registry) == [
        f"{path}:7: stages[2] (transform.matrix, tag late): a transform cannot follow a sink: "
        "the order is source, transforms, sinks"]


def test_two_sources(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - type: source.files
            paths: [b.laz]
          - type: sink.las
            path: out/{name}.las
        """)

    assert problems(path, registry) == [
        f"{path}:5: stages[1] (source.files): only one source is allowed, and it comes first"]


def test_no_sink(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - type: transform.matrix
            matrix: [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
        """)

    assert problems(path, registry) == [f"{path}:2: no sink: add at least one (for example type: sink.las)"]


def test_duplicate_tags(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            tag: out
            paths: [a.laz]
          - type: sink.las
            tag: out
            path: out/{name}.las
          - type: sink.ply
            tag: out
            path: out/{name}.ply
        """)

    assert problems(path, registry) == [
        f"{path}:7: stages[1] (sink.las, tag out): tag 'out' is already used by stages[0]",
        f"{path}:10: stages[2] (sink.ply, tag out): tag 'out' is already used by stages[0]",
    ]


# --- the top level ------------------------------------------------------------------------------

PIPELINE = """\
  - type: source.files
    paths: [a.laz]
  - type: sink.las
    path: out/{name}.las
"""


def test_missing_version(tmp_path, registry):
    path = write(tmp_path, "stages:\n" + PIPELINE)

    assert problems(path, registry) == [f"{path}:1: missing 'version: 1'"]


@pytest.mark.parametrize("version, shown", [("2", "2"), ('"1"', "'1'"), ("true", "True"), ("", "None")])
def test_wrong_version(tmp_path, registry, version, shown):
    path = write(tmp_path, f"stages:\n{PIPELINE}version: {version}\n")

    assert problems(path, registry) == [f"{path}:6: unsupported version {shown}; this tool reads version 1"]


def test_unknown_top_level_keys(tmp_path, registry):
    path = write(tmp_path, f"version: 1\nstagse: []\nstages:\n{PIPELINE}output: out/\n")

    assert problems(path, registry) == [
        f"{path}:2: unknown top-level key 'stagse'; did you mean 'stages'?",
        f"{path}:8: unknown top-level key 'output'",
    ]


@pytest.mark.parametrize("content, line", [("version: 1\nstages: []\n", ":2"), ("version: 1\n", ":1"),
                                           ("version: 1\nstages: sink.las\n", ":2")])
def test_no_stages(tmp_path, registry, content, line):
    path = write(tmp_path, content)

    assert problems(path, registry) == [f"{path}{line}: expected a non-empty list of stages"]


@pytest.mark.parametrize("content, location", [("", ""), ("# nothing yet\n", ""), ("- a\n- b\n", ":1"),
                                               ("just text\n", ":1")])
def test_not_a_mapping(tmp_path, registry, content, location):
    path = write(tmp_path, content)

    assert problems(path, registry) == [f"{path}{location}: expected a mapping with 'version' and 'stages'"]


@pytest.mark.parametrize("content, message", [
    ("version: 1\nstages:\n  - type: source.files\n    paths: [a.laz]\n   chunk_size: 5\n",
     "5: invalid YAML: expected <block end>, but found '<block mapping start>'"),
    ("version: 1\nstages:\n  - type: source.files\n    paths: [a.laz\n  - type: sink.las\n",
     "5: invalid YAML: expected ',' or ']', but got ':'"),
    ("version: 1\nstages:\n  - type: sink.las\n    path: \"out/{name}.las\n",
     "5: invalid YAML: found unexpected end of stream"),
    ("version: 1\nstages:\n\t- type: sink.las\n", "3: invalid YAML: found character '\\t' that cannot start any token"),
])
def test_invalid_yaml_names_the_line(tmp_path, registry, content, message):
    path = write(tmp_path, content)

    assert problems(path, registry) == [f"{path}:{message}"]


def test_not_utf8(tmp_path, registry):
    path = tmp_path / "pipeline.yaml"
    path.write_bytes(b"version: 1\nstages: \xff\n")

    assert problems(path, registry) == [f"{path}: not a UTF-8 text file (invalid start byte)"]


def test_missing_config_file(tmp_path, registry):
    path = tmp_path / "nope.yaml"

    assert problems(path, registry) == [f"{path}: cannot read config: No such file or directory"]


@pytest.mark.parametrize("value", ["!glob a.laz", "!!python/name:os.system"])
def test_unknown_yaml_tag_is_a_config_problem(tmp_path, registry, value):
    path = write(tmp_path, f"version: 1\nstages:\n  - type: source.files\n    paths: {value}\n"
                           "  - type: sink.las\n    path: out/{{name}}.las\n")

    found = problems(path, registry)  # a ConfigError naming the line, not a yaml ConstructorError

    assert len(found) == 1
    assert found[0].startswith(f"{path}:4: ")


def test_yaml_anchors_and_merge_keys(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.laz]
          - &las
            type: sink.las
            path: out/{name}.las
          - <<: *las
            path: out/{name}.laz
        """)

    config = load(path, registry)

    assert [(spec.type, spec.options["path"]) for spec in config.stages[1:]] == [
        ("sink.las", str(tmp_path.resolve() / "out" / "{name}.las")),
        ("sink.las", str(tmp_path.resolve() / "out" / "{name}.laz")),
    ]


def test_validation_collects_every_problem(tmp_path, registry):
    path = write(tmp_path, """\
        version: 2
        stages:
          - type: source.files
            tag: input
            paths: []
            chunk_size: -5
          - type: transform.matrix
            matrix: [1, 2, 3]
          - type: transform.scale
          - type: sink.las
            path: out/{name}.txt
          - type: sink.ply
            tag: ply
            path: out/{name}.ply
            ascii: yes please
            compress: true
        options: {}
        """)

    assert problems(path, registry) == [
        f"{path}:17: unknown top-level key 'options'",
        f"{path}:1: unsupported version 2; this tool reads version 1",
        f"{path}:5: stages[0] (source.files, tag input) > paths: expected at least 1 value(s), got 0",
        f"{path}:6: stages[0] (source.files, tag input) > chunk_size: expected an integer >= 1, got -5",
        f"{path}:8: stages[1] (transform.matrix) > matrix: expected 16 numbers, got 3",
        f"{path}:9: stages[2] (transform.scale): unknown stage type 'transform.scale'; "
        f"did you mean 'transform.align'? {KNOWN}",
        f"{path}:11: stages[3] (sink.las) > path: expected a path ending in .las or .laz",
        f"{path}:15: stages[4] (sink.ply, tag ply) > ascii: expected true or false, got a string 'yes please'",
        f"{path}:16: stages[4] (sink.ply, tag ply) > compress: unknown option (options: path, ascii, offset, colors, crs, merge)",
    ]


# --- environment variables ----------------------------------------------------------------------

ENV_CONFIG = """\
version: 1
stages:
  - type: source.files
    tag: input
    paths: ["${DATA}/*.laz", "${EXTRA:-extra}/x.ply", "cost$$5/${DATA}.las"]
    chunk_size: ${CHUNK}
  - type: sink.las
    path: "${OUT:-out}/{name}.las"
"""


def test_environment_variables_and_defaults(tmp_path, registry):
    path = write(tmp_path, ENV_CONFIG)
    base = tmp_path.resolve()

    config = load(path, registry, environ={"DATA": "scans", "CHUNK": "5000"})

    assert config.stages[0].options == {
        "paths": [str(base / "scans" / "*.laz"), str(base / "extra" / "x.ply"), str(base / "cost$5" / "scans.las")],
        "chunk_size": 5000, "columns": None, "metadata": None, "truncated": "error",
    }
    assert config.stages[1].options == {"path": str(base / "out" / "{name}.las"), **LAS_DEFAULTS}


def test_environment_variables_override_defaults(tmp_path, registry):
    path = write(tmp_path, ENV_CONFIG)

    config = load(path, registry, environ={"DATA": "/data", "CHUNK": "7", "EXTRA": "/more", "OUT": "/results"})

    assert config.stages[0].options == {"paths": ["/data/*.laz", "/more/x.ply", str(tmp_path.resolve() / "cost$5" / "data.las")],
                                        "chunk_size": 7, "columns": None, "metadata": None, "truncated": "error"}
    assert config.stages[1].options == {"path": "/results/{name}.las", **LAS_DEFAULTS}


def test_environment_defaults_to_os_environ(tmp_path, registry, monkeypatch):
    path = write(tmp_path, ENV_CONFIG)
    monkeypatch.setenv("DATA", "/env/data")
    monkeypatch.setenv("CHUNK", "64")
    monkeypatch.delenv("EXTRA", raising=False)
    monkeypatch.delenv("OUT", raising=False)

    assert load(path, registry).stages[0].options["chunk_size"] == 64


def test_missing_environment_variable_names_it_and_the_line(tmp_path, registry):
    path = write(tmp_path, ENV_CONFIG)

    assert problems(path, registry, environ={"CHUNK": "5"}) == [
        f"{path}:5: stages[0] > paths[0]: environment variable DATA is not set",
        f"{path}:5: stages[0] > paths[2]: environment variable DATA is not set",
    ]


def test_missing_environment_variable_is_one_problem(tmp_path, registry):
    path = write(tmp_path, ENV_CONFIG)

    # the empty text put in place of the variable is not reported a second time as a bad integer
    assert problems(path, registry, environ={"DATA": "scans"}) == [
        f"{path}:6: stages[0] > chunk_size: environment variable CHUNK is not set"]


def test_quoted_variable_stays_text(tmp_path, registry):
    path = write(tmp_path, ENV_CONFIG.replace("${CHUNK}", '"${CHUNK}"'))

    assert problems(path, registry, environ={"DATA": "d", "CHUNK": "5000"}) == [
        f"{path}:6: stages[0] (source.files, tag input) > chunk_size: expected an integer, got a string '5000'"]


def test_plain_variable_that_is_not_a_number_stays_text(tmp_path, registry):
    path = write(tmp_path, ENV_CONFIG)

    assert problems(path, registry, environ={"DATA": "d", "CHUNK": "12ab"}) == [
        f"{path}:6: stages[0] (source.files, tag input) > chunk_size: expected an integer, got a string '12ab'"]


LIST_VARIABLES = """\
version: 1
stages:
  - type: source.files
    paths: [a.laz, "${DATA}/b.laz"]
  - type: transform.matrix
    matrix: [[1, 0, 0, ${DX}], [0, 1, 0, ${DY:-2.5}], [0, 0, 1, 0], [0, 0, 0, 1]]
  - type: transform.matrix
    matrix:
      - [1, 0, 0, ${DX}]
      - [0, 1, 0, 0]
      - [0, 0, 1, 0]
      - [0, 0, 0, 1]
  - type: sink.las
    path: out/{name}.las
    scale: [${S}, ${S}, ${S}]
    offset:
      - ${S}
      - 0
      - 0
"""


def test_variables_inside_lists_are_typed_in_flow_and_block_style(tmp_path, registry):
    path = write(tmp_path, LIST_VARIABLES)

    config = load(path, registry, environ={"DX": "10", "S": "0.01", "DATA": "007"})

    flow, block = config.stages[1].options["matrix"], config.stages[2].options["matrix"]
    assert [row[3] for row in typed(flow)] == [10, 2.5, 0, 1] and typed(block)[0][3] == 10
    assert config.stages[3].options["scale"] == [0.01, 0.01, 0.01]
    assert config.stages[3].options["offset"] == [0.01, 0.0, 0.0]
    assert config.stages[0].options["paths"][1] == str(tmp_path.resolve() / "007" / "b.laz")  # text stays text


def test_a_variable_in_a_list_that_is_not_a_number_is_one_line(tmp_path, registry):
    path = write(tmp_path, LIST_VARIABLES)

    assert problems(path, registry, environ={"DX": "ten", "S": "0.01", "DATA": "d"}) == [
        f"{path}:6: stages[1] (transform.matrix) > matrix: element 4 is not a finite number: 'ten'",
        f"{path}:8: stages[2] (transform.matrix) > matrix: element 4 is not a finite number: 'ten'"]


# --- --set overrides ----------------------------------------------------------------------------

TAGGED = """\
version: 1
stages:
  - type: source.files
    tag: input
    paths: [a.laz]
  - type: sink.las
    tag: las
    path: out/{name}.las
"""


def test_overrides_are_read_as_yaml(tmp_path, registry):
    path = write(tmp_path, TAGGED)
    base = tmp_path.resolve()

    config = load(path, registry, overrides=["input.paths=[b.laz, 'c d.laz']", "input.chunk_size=42",
                                             "las.path=/abs/{id}.laz"])

    assert config.stages[0].options == {"paths": [str(base / "b.laz"), str(base / "c d.laz")], "chunk_size": 42, "columns": None, "metadata": None, "truncated": "error"}
    assert config.stages[1].options == {"path": "/abs/{id}.laz", **LAS_DEFAULTS}


def test_override_objects_are_accepted(tmp_path, registry):
    path = write(tmp_path, TAGGED)

    config = load(path, registry, overrides=[Override.parse("input.chunk_size=7")])

    assert config.stages[0].options["chunk_size"] == 7


@pytest.mark.parametrize("text, value", [
    ("a.b=1", 1), ("a.b=[1, 2]", [1, 2]), ("a.b=x=y", "x=y"), ("a.b=", ""), ("a.b=[oops", "[oops"),
    ("a.b={k: v}", {"k": "v"}), ("a.b.c=true", True),
])
def test_override_parse(text, value):
    override = Override.parse(text)

    assert (override.tag, override.option, override.value, override.text) == (
        "a", "b.c" if text.startswith("a.b.c") else "b", value, text)


def test_bad_override_value_is_a_config_problem(tmp_path, registry):
    path = write(tmp_path, TAGGED)

    assert problems(path, registry, overrides=["input.chunk_size=abc", "input.chunk_sz=3", "input.paths="]) == [
        f"{path}:5: stages[0] (source.files, tag input) > paths (from --set): [0]: expected a path, got a string ''",
        f"{path}: stages[0] (source.files, tag input) > chunk_size (from --set): expected an integer, got a string 'abc'",
        f"{path}: stages[0] (source.files, tag input) > chunk_sz (from --set): unknown option; "
        "did you mean 'chunk_size'? (options: chunk_size, paths, columns, metadata, truncated)",
    ]


def test_override_of_an_unknown_tag(tmp_path, registry):
    path = write(tmp_path, TAGGED)

    with pytest.raises(UsageError) as caught:
        load(path, registry, overrides=["lsa.path=out/{name}.laz"])

    assert str(caught.value) == "--set lsa.path: no stage has tag 'lsa' (tags: input, las)"


def test_override_without_any_tag(tmp_path, registry):
    path = write(tmp_path, "version: 1\nstages:\n" + PIPELINE)

    with pytest.raises(UsageError) as caught:
        load(path, registry, overrides=["input.chunk_size=5"])

    assert str(caught.value) == "--set input.chunk_size: no stage has tag 'input' (tags: none: add `tag:` to a stage)"


@pytest.mark.parametrize("text", ["input=3", "input.chunk_size", ".chunk_size=3", "input.=3", "chunk_size 3"])
def test_override_bad_syntax(tmp_path, registry, text):
    path = write(tmp_path, TAGGED)

    with pytest.raises(UsageError) as caught:
        load(path, registry, overrides=[text])

    # the value is never repeated: it may be a secret
    assert str(caught.value) == f"--set {text.partition('=')[0]}: expected TAG.OPTION=VALUE"


@pytest.mark.parametrize("option", ["type", "tag"])
def test_override_of_type_or_tag(tmp_path, registry, option):
    path = write(tmp_path, TAGGED)

    with pytest.raises(UsageError) as caught:
        load(path, registry, overrides=[f"las.{option}=sink.ply"])

    assert str(caught.value) == f"--set las.{option}: the stage's {option} cannot be set"


# --- secrets ------------------------------------------------------------------------------------

class TokenSource(Source):
    """Reads from a fake web service."""

    options = Source.options + (
        Option("url", text(), "the service address"),
        Option("token", text(), "the API token", secret=True),
    )


@pytest.fixture
def secret_registry():
    return Registry({"source.api": TokenSource, "sink.las": "stages.las:LasSink"})


SECRET_CONFIG = """\
version: 1
stages:
  - type: source.api
    tag: api
    url: https://scans.example.com
    token: TOKEN
  - type: sink.las
    path: out/{name}.las
"""


def test_secret_is_redacted_in_public_options(tmp_path, secret_registry):
    path = write(tmp_path, SECRET_CONFIG.replace("TOKEN", "hunter2-s3cret"))

    spec = load(path, secret_registry).stages[0]

    assert spec.secrets == frozenset({"token"})
    assert spec.options["token"] == "hunter2-s3cret"
    assert spec.public_options() == {"url": "https://scans.example.com", "token": "***", "chunk_size": 65_536}


def test_secret_from_the_environment(tmp_path, secret_registry):
    path = write(tmp_path, SECRET_CONFIG.replace("TOKEN", '"${API_TOKEN}"'))

    spec = load(path, secret_registry, environ={"API_TOKEN": "0123456789"}).stages[0]

    assert spec.options["token"] == "0123456789"
    assert spec.public_options()["token"] == "***"


def test_bad_secret_value_is_not_shown(tmp_path, secret_registry):
    path = write(tmp_path, SECRET_CONFIG.replace("TOKEN", "[hunter2-s3cret]"))

    found = problems(path, secret_registry)

    assert found == [f"{path}:6: stages[0] (source.api, tag api) > token: invalid value (not shown: it is a secret)"]


def test_bad_secret_value_from_set_is_not_shown(tmp_path, secret_registry):
    path = write(tmp_path, SECRET_CONFIG.replace("TOKEN", "ok"))

    with pytest.raises(ConfigError) as caught:
        load(path, secret_registry, overrides=["api.token={key: hunter2-s3cret}", "api.chunk_size=x"])

    assert "hunter2" not in str(caught.value)
    assert caught.value.problems == [
        f"{path}:6: stages[0] (source.api, tag api) > token (from --set): invalid value (not shown: it is a secret)",
        f"{path}: stages[0] (source.api, tag api) > chunk_size (from --set): expected an integer, got a string 'x'",
    ]


def test_registry_from_a_dict_mixes_classes_and_import_paths(tmp_path, secret_registry):
    path = write(tmp_path, SECRET_CONFIG.replace("TOKEN", "t"))

    config = load(path, secret_registry)

    assert [spec.type for spec in config.stages] == ["source.api", "sink.las"]
    assert secret_registry.get("source.api") is TokenSource
    assert secret_registry.get("sink.las") is LasSink


# --- the sample configs -------------------------------------------------------------------------

SAMPLES = sorted(glob.glob(str(REPO / "sample_configs" / "*.yaml")))


def test_there_are_sample_configs():
    assert str(REPO / "sample_configs" / "demo.yaml") in SAMPLES


@pytest.mark.parametrize("sample", SAMPLES, ids=os.path.basename)
def test_sample_config_validates(sample, registry):
    config = load(sample, registry, environ={})

    assert config.stages[0].kind == "source"
    assert config.sinks


def test_demo_config(registry):
    config = load(REPO / "sample_configs" / "demo.yaml", registry, environ={})
    data = REPO / "sample_configs" / "data"

    assert [(spec.type, spec.tag) for spec in config.stages] == [
        ("source.files", "input"), ("transform.align", "align"),
        ("sink.las", "las"), ("sink.las", "laz"), ("sink.ply", "ply"), ("sink.preview", "preview")]
    assert config.stages[0].options == {"paths": [str(data / "*.laz"), str(data / "*.ply")], "chunk_size": 65_536, "columns": None,
                                        "metadata": str(data / "capture.json"), "truncated": "error"}
    assert [spec.options["path"] for spec in config.sinks] == [
        str(REPO / "out" / "{name}.las"), str(REPO / "out" / "{name}.laz"), str(REPO / "out" / "{name}.ply"),
        str(REPO / "out" / "preview.png")]
    assert isinstance(config.source, StageSpec)
    assert FilesSource in {registry.get(spec.type) for spec in config.stages}


# --- hostile YAML: refused whole, at once, in one line ------------------------------------------------

def alias_bomb(levels=9, width=9):
    """448 bytes or so that a naive loader expands into width**levels values."""
    lines = [f"a0: &a0 [{', '.join(['x'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nversion: 1\nstages: *a{levels}\n"


@pytest.mark.parametrize("content, line, message", [
    (alias_bomb(), 1, "more than 100,000 values once its aliases are expanded"),
    ("version: 1\nstages: &s [*s]\n", 2, "an alias refers to a list or mapping that holds it (recursive YAML)"),
    ("version: 1\nstages: &s\n  - type: source.files\n    paths: *s\n", 2,
     "an alias refers to a list or mapping that holds it (recursive YAML)"),
    ("version: 1\nstages: " + "[" * 5000 + "]" * 5000 + "\n", 2, "lists or mappings nested more than 50 deep"),
    ("version: 1\nstages: !!python/object/apply:os.system [ls]\n", 2,
     "YAML tags are not accepted (!!python/object/apply:os.system)"),
    ("version: 1\nstages:\n  - type: !!str source.files\n", 3, "YAML tags are not accepted (!!str)"),
    ("version: !custom 1\n", 1, "YAML tags are not accepted (!custom)"),
])
def test_hostile_yaml_is_refused_in_one_line_at_once(tmp_path, registry, content, line, message):
    path = tmp_path / "hostile.yaml"
    path.write_text(content)
    started = time.perf_counter()

    assert problems(path, registry) == [f"{path}:{line}: refused: {message}"]
    # well under a second: 0.1 s for the alias bomb and 0.2 s for 5,000 nested lists on a quiet machine (the
    # first run of the bomb went past 4 GB and 60 s); a busy one takes up to three times as long
    assert time.perf_counter() - started < 1.0


def test_an_alias_bomb_on_the_command_line_is_refused(tmp_path, registry):
    path = write(tmp_path, TAGGED)
    bomb = alias_bomb().replace("\nversion: 1\nstages: *a9\n", "").replace("\n", ", ")

    with pytest.raises(UsageError) as caught:
        load(path, registry, overrides=[f"input.paths=[{bomb}]"])

    assert str(caught.value) == "--set input.paths: more than 100,000 values once its aliases are expanded"


def test_duplicate_keys_are_an_error_naming_both_lines(tmp_path, registry):
    path = write(tmp_path, """\
        version: 1
        stages:
          - type: source.files
            paths: [a.las]
            chunk_size: 10
            paths: [b.las]
          - type: sink.las
            path: out/{name}.las
        version: 1
        """)

    assert problems(path, registry) == [
        f"{path}:6: stages[0] > paths: duplicate key 'paths' (also on line 4)",
        f"{path}:9: version: duplicate key 'version' (also on line 1)",
    ]


def test_a_number_of_a_hundred_thousand_digits_is_one_line(tmp_path, registry):
    path = write(tmp_path, TAGGED.replace("    paths: [a.laz]\n", "    paths: [a.laz]\n    chunk_size: " + "9" * 100_000 + "\n"))

    assert problems(path, registry) == [f"{path}:6: stages[0] > chunk_size: a number of 100,000 digits is not accepted"]
