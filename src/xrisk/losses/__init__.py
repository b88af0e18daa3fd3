"""Re-exports only."""

from xrisk.losses.ap import APLoss
from xrisk.losses.aucm import AUCMLoss
from xrisk.losses.compositional_auc import CompositionalAUCLoss
from xrisk.losses.dft import DFTLoss
from xrisk.losses.false_negatives import FalseNegativeDetector
from xrisk.losses.global_contrastive import GlobalContrastiveLoss
from xrisk.losses.nuclr import NUCLRLoss
from xrisk.losses.focal import FocalLoss
from xrisk.losses.pauc_one_way import OneWayPartialAUCLoss
from xrisk.losses.pauc_two_way import TwoWayPartialAUCLoss

__all__ = ["AUCMLoss", "CompositionalAUCLoss", "APLoss", "OneWayPartialAUCLoss", "TwoWayPartialAUCLoss",
           "FocalLoss", "GlobalContrastiveLoss", "NUCLRLoss", "FalseNegativeDetector", "DFTLoss"]
