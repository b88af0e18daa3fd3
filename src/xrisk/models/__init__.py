"""Re-exports only."""

from xrisk.models.cnn import SmallCNN
from xrisk.models.encoders import (
    BagOfTokensTextEncoder, ContrastiveEncoder, ConvBackbone, MLPBackbone, PrecomputedTextEncoder,
    ProjectionHead, SimpleTokenizer, TinyViT,
)
from xrisk.models.mlp import MLP
from xrisk.models.text_classifier import TransformerTextClassifier, minilm_text_classifier
from xrisk.models.timeseries import Time2Vec, TokenBatch, TripletOutput, TripletTransformer, length_buckets

__all__ = ["MLP", "SmallCNN",
           "BagOfTokensTextEncoder", "ContrastiveEncoder", "ConvBackbone", "MLPBackbone",
           "PrecomputedTextEncoder", "ProjectionHead", "SimpleTokenizer", "TinyViT",
           "TransformerTextClassifier", "minilm_text_classifier",
           "Time2Vec", "TokenBatch", "TripletOutput", "TripletTransformer", "length_buckets"]
