"""Re-exports only."""

from xrisk.metrics.ranking import auroc, average_precision, partial_auroc
from xrisk.metrics.streaming import AUROC, AveragePrecision, PartialAUROC
from xrisk.metrics.retrieval import LinearProbeResult, image_text_recall, linear_probe, recall_at_k, zero_shot_accuracy
from xrisk.metrics.key import KEY_NAMES, key_weighted_score
from xrisk.metrics.probe import ChunkFeatures, ProbeResult, ProbeSetting, fit_probe

__all__ = ["auroc", "average_precision", "partial_auroc", "AUROC", "AveragePrecision", "PartialAUROC",
           "LinearProbeResult", "image_text_recall", "linear_probe", "recall_at_k", "zero_shot_accuracy",
           "KEY_NAMES", "key_weighted_score", "ChunkFeatures", "ProbeResult", "ProbeSetting", "fit_probe"]
