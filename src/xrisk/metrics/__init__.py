"""Re-exports only."""

from xrisk.metrics.ranking import auroc, average_precision, partial_auroc
from xrisk.metrics.streaming import AUROC, AveragePrecision, PartialAUROC
from xrisk.metrics.retrieval import LinearProbeResult, image_text_recall, linear_probe, recall_at_k, zero_shot_accuracy

__all__ = ["auroc", "average_precision", "partial_auroc", "AUROC", "AveragePrecision", "PartialAUROC",
           "LinearProbeResult", "image_text_recall", "linear_probe", "recall_at_k", "zero_shot_accuracy"]
