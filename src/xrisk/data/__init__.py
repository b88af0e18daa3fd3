"""Re-exports only."""

from xrisk.data.augment import ContrastiveAugment
from xrisk.data.builtin import BinaryData, MulticlassData, load_binary, load_multiclass
from xrisk.data.builtin import class_names, resolve_positive_class
from xrisk.data.errors import DataNotInstalledError
from xrisk.data.indexed import IndexedDataset
from xrisk.data.samplers import DistributedDualSampler, DualBatchSampler, DualSampler
from xrisk.data.samplers import ShardLocalDualSampler, ShardLocalSampler
from xrisk.data.stratified import StratifiedBatches
from xrisk.data.captions import CaptionedImages, load_fashion_captions, minilm_embeddings
from xrisk.data.emoji import EmojiPairs, load_emoji
from xrisk.data.reference_cache import ReferenceCache, ReferenceCacheError, ReferenceCacheMismatchError
from xrisk.data.fairness import FairnessData, load_fairness
from xrisk.data.audio import AudioReadError, AudioSet, CropPairs, load_audio_folder, read_audio
from xrisk.data.music import load_singularity_music, load_sonic_pi_samples
from xrisk.data.key_corpus import KeyClips, render_key_corpus

__all__ = ["DataNotInstalledError", "IndexedDataset", "DualSampler", "DistributedDualSampler", "DualBatchSampler",
           "ShardLocalSampler", "ShardLocalDualSampler",
           "BinaryData", "MulticlassData", "load_binary", "load_multiclass", "class_names", "resolve_positive_class",
           "ContrastiveAugment", "CaptionedImages", "load_fashion_captions", "minilm_embeddings",
           "EmojiPairs", "load_emoji", "ReferenceCache", "ReferenceCacheError", "ReferenceCacheMismatchError",
           "AudioReadError", "AudioSet", "CropPairs", "load_audio_folder", "read_audio",
           "load_singularity_music", "load_sonic_pi_samples", "KeyClips", "render_key_corpus",
           "FairnessData", "load_fairness", "StratifiedBatches"]
