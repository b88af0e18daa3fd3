"""Re-exports only."""

from xrisk.models.audio.masking import num_kept_tokens, random_keep_indices
from xrisk.models.audio.mel import MelSpectrogram, hz_to_mel, mel_to_hz, slaney_mel_filterbank
from xrisk.models.audio.vit import PRESETS, PatchEmbedding, SpectrogramTransformer, SpectrogramViT, sincos_positions_2d

__all__ = ["MelSpectrogram", "hz_to_mel", "mel_to_hz", "slaney_mel_filterbank", "num_kept_tokens",
           "random_keep_indices", "PRESETS", "PatchEmbedding", "SpectrogramTransformer", "SpectrogramViT",
           "sincos_positions_2d"]
