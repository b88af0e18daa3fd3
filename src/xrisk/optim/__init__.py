"""Re-exports only."""

from xrisk.optim.pdsca import PDSCA
from xrisk.optim.pesg import PESG

__all__ = ["PESG", "PDSCA"]
