"""Re-exports only."""

from xrisk.functional import ap, pauc
from xrisk.functional import contrastive, similarity
from xrisk.functional import aucm

__all__ = ["ap", "aucm", "contrastive", "pauc", "similarity"]
