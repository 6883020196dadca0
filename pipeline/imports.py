"""Imports of heavy or optional libraries, done inside the stages that need them."""
import importlib

from .errors import MissingDependency

HINTS = {
    "open3d": "pip install open3d-cpu (on Debian the system library libusb-1.0-0 too: apt-get install libusb-1.0-0)",
    "laspy": "pip install 'laspy[lazrs]'",
    "lazrs": "pip install lazrs",
    "pye57": "pip install pye57",
    "requests": "pip install requests",
    "distributed": "pip install '.[dask]' (from this repository), or pip install 'dask[distributed]'",
}


def require(module_name, needed_for=""):
    """Imports a module, or raises a one-line MissingDependency that says what to install."""
    try:
        return importlib.import_module(module_name)
    except (ImportError, OSError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        purpose = f" (needed for {needed_for})" if needed_for else ""
        hint = HINTS.get(module_name.partition(".")[0], f"pip install {module_name}")
        raise MissingDependency(f"cannot import {module_name}{purpose}: {reason}; install it with: {hint}") from error
