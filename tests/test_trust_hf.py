"""The Hugging Face adapter on a tiny randomly initialised LLaVA built from a config (offline)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from xrisk.trust.adapters import get_adapter, supports_white_box  # noqa: E402
from xrisk.trust.attacks import white_box_attack  # noqa: E402

WORDS = ["<pad>", "<unk>", "<s>", "</s>", "<image>", "A", "B", "C", "D", "Yes", "No", "Is", "there", "a", "car", "?",
         "Answer", "with", "or", "directly", ".", "the"]


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """A LLaVA with a 1-layer CLIP vision tower (32 x 32 pictures, 8 x 8 patches) and a 1-layer Llama."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>",
                                                bos_token="<s>", eos_token="</s>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                                      crop_size={"height": 32, "width": 32})
    chat = ("{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image> "
            "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}")
    processor = transformers.LlavaProcessor(image_processor=image_processor, tokenizer=fast, patch_size=8,
                                            vision_feature_select_strategy="default", chat_template=chat,
                                            image_token="<image>", num_additional_image_tokens=1)
    config = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                    num_attention_heads=2, image_size=32, patch_size=8),
        text_config=transformers.LlamaConfig(vocab_size=len(WORDS), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                             max_position_embeddings=128),
        image_token_index=vocab["<image>"], vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    path = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_hf_adapter_generates_and_is_attackable(tiny_llava):
    adapter = get_adapter("hf", model=tiny_llava, local_files_only=True, max_new_tokens=3)
    assert supports_white_box(adapter) and adapter.name == "hf"
    image = (torch.rand(3, 40, 50) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    prompt = "Is there a car ?\nAnswer with Yes or No directly."
    reply = adapter.generate(image, prompt)
    assert isinstance(reply, str)
    assert adapter.generate(image, prompt) == reply  # greedy: the same reply twice
    assert isinstance(adapter.generate(None, prompt), str)  # text-only record
    x = adapter.preprocess(image)
    assert x.shape == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    xg = x.clone().requires_grad_(True)
    logits = adapter.choice_logits(xg, prompt, ["Yes", "No"])
    assert logits.shape == (2,)
    (logits[0] - logits[1]).backward()
    assert xg.grad is not None and float(xg.grad.abs().sum()) > 0
    # the logits at the picture the processor would make from the PIL image equal those of the tensor path
    with torch.no_grad():
        inputs = adapter._inputs(image, prompt)
        direct = adapter.model(**inputs).logits[0, -1, adapter._candidate_ids(["Yes", "No"])]
    assert torch.allclose(direct, adapter.choice_logits(x, prompt, ["Yes", "No"]).detach(), atol=1e-2)
    logits = logits.detach()
    label = "yes" if float(logits[0]) > float(logits[1]) else "no"
    adv = white_box_attack(adapter, image, prompt, "yes-or-no", label, method="pgd", steps=3)
    assert adv.shape == x.shape and float((adv - x).abs().max()) <= 16 / 255 + 1e-6
    after = adapter.choice_logits(adv, prompt, ["Yes", "No"]).detach()
    sign = 1 if label == "yes" else -1
    assert sign * float(after[0] - after[1]) < sign * float(logits[0] - logits[1])  # the margin shrank
    assert isinstance(adapter.generate(adv, prompt), str)


def test_hf_adapter_refuses_bad_arguments(tiny_llava):
    with pytest.raises(ValueError, match="folder or a hub id"):
        get_adapter("hf", model="  ")
    with pytest.raises(ValueError, match="max_new_tokens"):
        get_adapter("hf", model=tiny_llava, max_new_tokens=0)
    with pytest.raises(OSError):
        get_adapter("hf", model=str(tiny_llava) + "-missing", local_files_only=True)
