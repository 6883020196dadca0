"""The stage registry: names to classes or `module:Class` paths, filled from real entry points."""
import importlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.errors import MissingDependency, PipelineError
from pipeline.registry import ENTRY_POINT_GROUP, Registry
from stages.crop import CropTransform
from stages.cupix.alignment import AlignTransform
from stages.cupix.source import CupixSource
from stages.decimate import DecimateTransform
from stages.files import FilesSource
from stages.filter import FilterTransform
from stages.las import LasSink
from stages.matrix import MatrixTransform
from stages.overlap import OverlapSink
from stages.normals import NormalsTransform
from stages.outliers import OutliersTransform
from stages.ply import PlySink
from stages.preview import PreviewSink
from stages.voxel import VoxelTransform

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = {
    "sink.las": "stages.las:LasSink",
    "sink.ply": "stages.ply:PlySink",
    "sink.preview": "stages.preview:PreviewSink",
    "sink.overlap": "stages.overlap:OverlapSink",
    "source.cupix": "stages.cupix.source:CupixSource",
    "source.files": "stages.files:FilesSource",
    "transform.align": "stages.cupix.alignment:AlignTransform",
    "transform.crop": "stages.crop:CropTransform",
    "transform.decimate": "stages.decimate:DecimateTransform",
    "transform.filter": "stages.filter:FilterTransform",
    "transform.matrix": "stages.matrix:MatrixTransform",
    "transform.normals": "stages.normals:NormalsTransform",
    "transform.outliers": "stages.outliers:OutliersTransform",
    "transform.voxel": "stages.voxel:VoxelTransform",
}
STAGE_MODULE = '''\
from pipeline.stage import {base}


class {name}({base}):
    """A stage made by the registry tests."""
'''


@pytest.fixture
def modules(tmp_path, monkeypatch):
    """Writes modules into a folder on sys.path; forgets them afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    written = []

    def write(module_name, source):
        (folder / f"{module_name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        written.append(module_name)
        importlib.invalidate_caches()
        return module_name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def stage_module(name="LazySource", base="Source"):
    return STAGE_MODULE.format(name=name, base=base)


def add_distribution(folder, name, entry_points, version="1.0"):
    """A minimal installed distribution: NAME-VERSION.dist-info with METADATA and entry_points.txt."""
    info = Path(folder) / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    lines = "".join(f"{stage} = {target}\n" for stage, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{lines}", encoding="utf-8")
    importlib.invalidate_caches()
    return info


# --- a registry built from a dict ---------------------------------------------------------------

def test_registry_from_classes_and_import_paths():
    registry = Registry({"source.files": FilesSource, "sink.las": "stages.las:LasSink"})

    assert registry.names() == ["sink.las", "source.files"]
    assert "sink.las" in registry and "source.files" in registry
    assert "sink.ply" not in registry and "files" not in registry
    assert registry.get("source.files") is FilesSource
    assert registry.get("sink.las") is LasSink
    assert registry.get("sink.las") is registry.get("sink.las")
    assert registry.entries() == {"sink.las": "stages.las:LasSink", "source.files": FilesSource}


def test_empty_registry():
    registry = Registry()

    assert registry.names() == []
    assert registry.entries() == {}
    assert registry.unknown_message("sink.las") == "unknown stage type 'sink.las' (known: )"


def test_unknown_name():
    registry = Registry({"source.files": FilesSource, "sink.las": "stages.las:LasSink"})

    with pytest.raises(PipelineError) as caught:
        registry.get("sink.lass")

    assert type(caught.value) is PipelineError
    assert str(caught.value) == "unknown stage type 'sink.lass'; did you mean 'sink.las'? (known: sink.las, source.files)"


def test_import_path_is_imported_only_on_get(modules):
    module = modules("cupix_test_lazy_stage", stage_module())
    registry = Registry({"source.lazy": f"{module}:LazySource"})

    assert registry.names() == ["source.lazy"]
    assert "source.lazy" in registry
    assert registry.entries() == {"source.lazy": f"{module}:LazySource"}
    assert module not in sys.modules

    cls = registry.get("source.lazy")

    assert module in sys.modules
    assert cls is sys.modules[module].LazySource
    assert cls.kind == "source"


def test_missing_module_is_a_missing_dependency():
    registry = Registry({"source.gone": "cupix_no_such_module:Gone"})

    with pytest.raises(MissingDependency) as caught:
        registry.get("source.gone")

    assert str(caught.value) == ("stage 'source.gone' cannot be loaded: No module named 'cupix_no_such_module'; "
                                 "install the package that provides 'cupix_no_such_module'")


def test_missing_dependency_of_a_stage_module_names_the_dependency(modules):
    module = modules("cupix_test_needy_stage", "import cupix_missing_dependency\n" + stage_module("Needy"))
    registry = Registry({"source.needy": f"{module}:Needy"})

    with pytest.raises(MissingDependency) as caught:
        registry.get("source.needy")

    assert str(caught.value) == ("stage 'source.needy' cannot be loaded: No module named 'cupix_missing_dependency'; "
                                 "install the package that provides 'cupix_missing_dependency'")
    assert "source.needy" in registry  # a failed load leaves the name registered


def test_import_error_of_several_lines_gives_a_one_line_message(modules):
    module = modules("cupix_test_broken_stage", '''\
        raise ImportError("libfoo.so.1: cannot open shared object file\\n"
                          "see https://example.invalid/help for the details")
        ''')
    registry = Registry({"source.broken": f"{module}:Broken"})

    with pytest.raises(MissingDependency) as caught:
        registry.get("source.broken")

    assert str(caught.value) == ("stage 'source.broken' cannot be loaded: libfoo.so.1: cannot open shared object file; "
                                 f"install the package that provides '{module}'")


def test_native_library_load_failure_is_a_missing_dependency(modules):
    # open3d raises OSError when a system library is missing (see pipeline.imports.HINTS)
    module = modules("cupix_test_native_stage",
                     'raise OSError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")\n')
    registry = Registry({"source.native": f"{module}:Native"})

    with pytest.raises(MissingDependency) as caught:
        registry.get("source.native")

    assert str(caught.value) == ("stage 'source.native' cannot be loaded: libusb-1.0.so.0: cannot open shared object "
                                 f"file: No such file or directory; install the package that provides '{module}'")


def test_missing_class_in_an_existing_module_is_a_pipeline_error():
    registry = Registry({"transform.nope": "stages.matrix:NoSuchTransform"})

    with pytest.raises(PipelineError) as caught:  # not a bare AttributeError, which the CLI calls an internal error
        registry.get("transform.nope")

    message = str(caught.value)
    assert "\n" not in message
    assert "'transform.nope'" in message and "NoSuchTransform" in message


@pytest.mark.parametrize("name, target", [
    ("sink.files", FilesSource),
    ("source.matrix", MatrixTransform),
    ("transform.ply", "stages.ply:PlySink"),
])
def test_wrong_kind_is_refused(name, target):
    registry = Registry({name: target})
    cls = target if isinstance(target, type) else PlySink

    with pytest.raises(PipelineError) as caught:
        registry.get(name)

    kind = name.partition(".")[0]
    assert str(caught.value) == f"stage {name!r} ({cls!r}) is not a {kind} stage"


def test_object_that_is_not_a_stage_is_refused():
    from stages.matrix import as_matrix

    registry = Registry({"transform.function": "stages.matrix:as_matrix"})

    with pytest.raises(PipelineError) as caught:
        registry.get("transform.function")

    assert str(caught.value) == f"stage 'transform.function' ({as_matrix!r}) is not a transform stage"


@pytest.mark.parametrize("name", ["files", "source", "source.", ".files", "", "filter.voxel", "Source.files",
                                  "sinks.las"])
def test_bad_names_are_refused(name):
    message = f"bad stage name {name!r}: expected <kind>.<name> with kind one of source, transform, sink"

    with pytest.raises(PipelineError) as caught:
        Registry({name: FilesSource})
    assert str(caught.value) == message

    registry = Registry()
    with pytest.raises(PipelineError) as caught:
        registry.add(name, "stages.files:FilesSource")
    assert str(caught.value) == message
    assert registry.names() == []


def test_same_registration_twice_is_accepted():
    registry = Registry({"source.files": "stages.files:FilesSource"})

    registry.add("source.files", "stages.files:FilesSource")

    assert registry.entries() == {"source.files": "stages.files:FilesSource"}


def test_conflicting_registration_is_refused():
    registry = Registry({"source.files": "stages.files:FilesSource"})

    with pytest.raises(PipelineError) as caught:
        registry.add("source.files", "other_package.files:FilesSource")

    assert str(caught.value) == "stage 'source.files' is already registered as stages.files:FilesSource"
    assert registry.entries() == {"source.files": "stages.files:FilesSource"}
    assert registry.get("source.files") is FilesSource


def test_conflicting_class_registration_is_refused():
    registry = Registry({"sink.las": LasSink})

    with pytest.raises(PipelineError) as caught:
        registry.add("sink.las", PlySink)

    assert str(caught.value) == f"stage 'sink.las' is already registered as {LasSink!r}"


# --- entry points -------------------------------------------------------------------------------

def test_built_in_stages_come_from_entry_points():
    registry = Registry.from_entry_points()

    assert registry.entries() == BUILT_IN
    assert [registry.get(name) for name in registry.names()] == [
        LasSink, OverlapSink, PlySink, PreviewSink, CupixSource, FilesSource, AlignTransform, CropTransform,
        DecimateTransform, FilterTransform, MatrixTransform, NormalsTransform, OutliersTransform, VoxelTransform]


def test_other_group_is_empty():
    assert Registry.from_entry_points(group="cupix_pipeline.no_such_group").names() == []


def test_plugin_distribution_adds_a_stage(tmp_path, modules):
    module = modules("cupix_demo_plugin", stage_module("DemoSource") + stage_module("DemoSink", "Sink"))
    plugins = tmp_path / "site"
    add_distribution(plugins, "cupix-demo-plugin", {"source.demo": f"{module}:DemoSource",
                                                    "sink.demo": f"{module}:DemoSink",
                                                    "sink.las": "stages.las:LasSink"})

    registry = Registry.from_entry_points()

    assert registry.entries() == {**BUILT_IN, "source.demo": f"{module}:DemoSource", "sink.demo": f"{module}:DemoSink"}
    assert registry.names() == ["sink.demo", "sink.las", "sink.overlap", "sink.ply", "sink.preview", "source.cupix", "source.demo",
                                "source.files", "transform.align", "transform.crop", "transform.decimate",
                                "transform.filter", "transform.matrix", "transform.normals", "transform.outliers",
                                "transform.voxel"]
    assert module not in sys.modules

    demo = registry.get("source.demo")

    assert demo is sys.modules[module].DemoSource
    assert registry.get("sink.demo") is sys.modules[module].DemoSink
    assert registry.get("source.files") is FilesSource


def test_two_distributions_claiming_one_name_is_an_error(tmp_path, monkeypatch):
    first, second = tmp_path / "first", tmp_path / "second"
    add_distribution(first, "plugin-a", {"source.twin": "plugin_a:Twin"})
    add_distribution(second, "plugin-b", {"source.twin": "plugin_b:Twin"})
    monkeypatch.syspath_prepend(str(first))
    monkeypatch.syspath_prepend(str(second))  # now first on sys.path, so found first

    with pytest.raises(PipelineError) as caught:
        Registry.from_entry_points()

    assert str(caught.value) == ("stage 'source.twin' is registered twice: by plugin-b (plugin_b:Twin) "
                                 "and by plugin-a (plugin_a:Twin)")


def test_plugin_replacing_a_built_in_stage_is_an_error(tmp_path, monkeypatch):
    add_distribution(tmp_path, "fast-las", {"sink.las": "fast_las:LasSink"})
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PipelineError) as caught:
        Registry.from_entry_points()

    assert str(caught.value) == ("stage 'sink.las' is registered twice: by fast-las (fast_las:LasSink) "
                                 "and by cupix-pipeline (stages.las:LasSink)")


def test_plugin_with_a_bad_stage_name_is_an_error(tmp_path, monkeypatch):
    add_distribution(tmp_path, "odd-plugin", {"filter.voxel": "odd:Voxel"})
    monkeypatch.syspath_prepend(str(tmp_path))

    with pytest.raises(PipelineError) as caught:
        Registry.from_entry_points()

    assert str(caught.value) == ("bad stage name 'filter.voxel': expected <kind>.<name> with kind one of "
                                 "source, transform, sink")


# --- no heavy imports ---------------------------------------------------------------------------

HEAVY_CHECK = """\
import json, sys
heavy = ("open3d", "laspy", "lazrs", "requests", "numpy")
import pipeline, pipeline.config, pipeline.registry, pipeline.cli
after_import = sorted(m for m in heavy if m in sys.modules)
from pipeline.registry import Registry
registry = Registry.from_entry_points()
after_registry = sorted(m for m in heavy if m in sys.modules)
config = pipeline.config.load("sample_configs/demo.yaml", registry)
after_validate = sorted(m for m in heavy if m in sys.modules)
from pipeline.cli import describe_stages
listed = describe_stages(registry)
after_stages = sorted(m for m in heavy if m in sys.modules)
print(json.dumps({"import": after_import, "registry": after_registry, "validate": after_validate,
                  "listed": after_stages, "stages": len(config.stages), "known": len(listed)}))
"""


def test_import_and_validation_load_no_heavy_library():
    done = subprocess.run([sys.executable, "-c", HEAVY_CHECK], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    # numpy, open3d, laspy and requests are imported only when data is read or written
    assert json.loads(done.stdout) == {"import": [], "registry": [], "validate": [], "listed": [], "stages": 6,
                                       "known": len(BUILT_IN)}
