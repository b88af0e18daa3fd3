"""Stand-in for ``torchvision``, used by the benchmarks only (never by xrisk itself).

LibAUC 2.0.1's ``libauc/sampler/sampler.py`` imports ``torchvision`` at module level only for
an ``isinstance(dataset, torchvision.datasets.ImageFolder)`` check. The PyPI torchvision wheel
that pip pairs with torch 2.13.0+cpu is a CUDA build whose C operators do not load
("operator torchvision::nms does not exist"), so ``import libauc.sampler`` fails on a CPU box.
``bench/_common.py::import_libauc`` puts ``bench/libauc_compat`` first on ``sys.path`` so that
this module is found instead. Nothing but that ``isinstance`` check is provided.
"""
from . import datasets

__version__ = "0.0.0+xrisk-bench-stub"
__all__ = ["datasets"]
