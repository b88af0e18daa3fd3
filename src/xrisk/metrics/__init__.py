"""Re-exports only."""

from xrisk.metrics.ranking import auroc, average_precision, partial_auroc
from xrisk.metrics.streaming import AUROC, AveragePrecision, PartialAUROC
from xrisk.metrics.retrieval import LinearProbeResult, image_text_recall, linear_probe, recall_at_k, zero_shot_accuracy
from xrisk.metrics.retrieval import LinearClassifier, fit_linear_classifier

__all__ = ["auroc", "average_precision", "partial_auroc", "AUROC", "AveragePrecision", "PartialAUROC",
           "LinearProbeResult", "image_text_recall", "linear_probe", "recall_at_k", "zero_shot_accuracy",
           "LinearClassifier", "fit_linear_classifier"]
