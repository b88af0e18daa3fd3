"""Re-exports only."""

from xrisk.models.cnn import SmallCNN
from xrisk.models.encoders import (
    BagOfTokensTextEncoder, ContrastiveEncoder, ConvBackbone, MLPBackbone, PrecomputedTextEncoder,
    ProjectionHead, SimpleTokenizer, TinyViT,
)
from xrisk.models.mlp import MLP
from xrisk.models.text_classifier import TransformerTextClassifier, minilm_text_classifier

__all__ = ["MLP", "SmallCNN",
           "BagOfTokensTextEncoder", "ContrastiveEncoder", "ConvBackbone", "MLPBackbone",
           "PrecomputedTextEncoder", "ProjectionHead", "SimpleTokenizer", "TinyViT",
           "TransformerTextClassifier", "minilm_text_classifier"]
