"""Re-exports only."""

from xrisk.models.cnn import SmallCNN
from xrisk.models.encoders import (
    BagOfTokensTextEncoder, ContrastiveEncoder, ConvBackbone, MLPBackbone, PrecomputedTextEncoder,
    ProjectionHead, SimpleTokenizer, TinyViT,
)
from xrisk.models.mlp import MLP

__all__ = ["MLP", "SmallCNN",
           "BagOfTokensTextEncoder", "ContrastiveEncoder", "ConvBackbone", "MLPBackbone",
           "PrecomputedTextEncoder", "ProjectionHead", "SimpleTokenizer", "TinyViT"]
