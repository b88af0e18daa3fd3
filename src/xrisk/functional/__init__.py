"""Re-exports only."""

from xrisk.functional import ap, pauc
from xrisk.functional import contrastive, similarity
from xrisk.functional import aucm
from xrisk.functional import dft
from xrisk.functional import imputation

__all__ = ["ap", "aucm", "contrastive", "dft", "imputation", "pauc", "similarity"]
