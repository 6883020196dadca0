import importlib

import pytest

from pipeline.errors import MissingDependency
from pipeline.imports import require


def test_a_missing_module_says_what_to_install():
    with pytest.raises(MissingDependency) as error:
        require("no_such_module_here", "testing")
    assert str(error.value) == ("cannot import no_such_module_here (needed for testing): No module named "
                                "'no_such_module_here'; install it with: pip install no_such_module_here")


def test_open3d_without_libusb_names_the_debian_package(monkeypatch):
    real_import = importlib.import_module

    def failing_import(name, *args):
        if name == "open3d":
            raise OSError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", failing_import)
    with pytest.raises(MissingDependency) as error:
        require("open3d", "reading PLY with open3d")
    assert str(error.value) == (
        "cannot import open3d (needed for reading PLY with open3d): libusb-1.0.so.0: cannot open shared object "
        "file: No such file or directory; install it with: pip install open3d-cpu (on Debian the system library "
        "libusb-1.0-0 too: apt-get install libusb-1.0-0)")
