"""Re-exports only."""

from xrisk.optim.pdsca import PDSCA
from xrisk.optim.pesg import PESG
from xrisk.optim.smoothed_compositional import SmoothedCompositionalGD
from xrisk.optim.prox_linear import ProxLinear

__all__ = ["PESG", "PDSCA", "SmoothedCompositionalGD", "ProxLinear"]
