"""Re-exports only (``TwoWayPartialAUROC`` lazily: it needs the ``metrics`` extra, torchmetrics)."""

from typing import Any

from xrisk.metrics.ranking import auroc, average_precision, mcclish_to_normalized, normalized_to_mcclish, partial_auroc
from xrisk.metrics.detection import detection_metrics, grouped_detection_metrics, tpr_at_fpr
from xrisk.metrics.retrieval import LinearProbeResult, image_text_recall, linear_probe, recall_at_k, zero_shot_accuracy
from xrisk.metrics.retrieval import LinearClassifier, fit_linear_classifier
from xrisk.metrics.key import KEY_NAMES, key_weighted_score
from xrisk.metrics.probe import ChunkFeatures, ProbeResult, ProbeSetting, fit_probe

__all__ = ["auroc", "average_precision", "partial_auroc", "normalized_to_mcclish", "mcclish_to_normalized",
           "tpr_at_fpr", "detection_metrics", "grouped_detection_metrics",
           "LinearProbeResult", "image_text_recall", "linear_probe", "recall_at_k", "zero_shot_accuracy",
           "KEY_NAMES", "key_weighted_score", "ChunkFeatures", "ProbeResult", "ProbeSetting", "fit_probe",
           "LinearClassifier", "fit_linear_classifier"]


def __getattr__(name: str) -> Any:
    if name == "TwoWayPartialAUROC":
        from xrisk.metrics.streaming import TwoWayPartialAUROC

        return TwoWayPartialAUROC
    raise AttributeError(f"module 'xrisk.metrics' has no attribute {name!r}")
