"""Any Hugging Face image-text-to-text model as an adapter (``hf``; needs ``transformers``).

``HuggingFaceAdapter(model)`` loads ``AutoProcessor`` and ``AutoModelForImageTextToText`` from a
local folder or a hub id (downloaded by ``transformers`` when the machine has a network and
``HF_HUB_OFFLINE`` is not set; ``local_files_only=True`` never downloads). Replies are greedy
(``do_sample=False``) with ``max_new_tokens`` new tokens, through the processor's chat template
when it has one (one user turn: the image, then the prompt) and ``"<image>\\n" + prompt`` otherwise.

White-box attacks (:meth:`HuggingFaceAdapter.choice_logits`) work for processors that turn one
picture into one ``pixel_values`` tensor of shape ``[1, 3, H, W]`` by resizing, cropping and
normalising (LLaVA-1.5, BLIP-2, PaliGemma, Idefics-style single-tile processors):
:meth:`~HuggingFaceAdapter.preprocess` does the resize and crop once (the attack perturbs that
``3 x H x W`` picture), and the normalisation ``(x - mean) / std`` is done in torch, so the
candidates' logits at the last position are differentiable in the picture. Processors that tile
or patchify (LLaVA-NeXT any-res, Qwen2-VL) raise ``NotImplementedError`` there; ``generate``
works for all.

The candidates' logits are read at the first token of each candidate (``"A"``, ``"Yes"`` ...),
as the reference does (it asserts one token per candidate).

Example (offline, a folder written by ``save_pretrained``)::

    adapter = get_adapter("hf", model="/models/llava-1.5-7b-hf")
    adapter.generate(image, "Is there a pedestrian?\\nAnswer with Yes or No directly.")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from xrisk.trust.adapters import ImageLike, register_adapter, to_pil, to_tensor

__all__ = ["HuggingFaceAdapter"]


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the hf adapter needs transformers: pip install 'xrisk[hf]'") from e
    return transformers


class HuggingFaceAdapter:
    """A transformers image-text-to-text model (see the module notes).

    Args:
        model: a local folder or a hub id.
        max_new_tokens: reply length limit.
        device: torch device of the model.
        local_files_only: never download (default: transformers' own setting, e.g. ``HF_HUB_OFFLINE``).
        name: adapter name (the answers' key in reports).
    """

    def __init__(self, model: str, *, max_new_tokens: int = 32, device: str = "cpu",
                 local_files_only: bool | None = None, name: str = "hf") -> None:
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"model must be a folder or a hub id, got {model!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
        tf = _transformers()
        kw = {} if local_files_only is None else {"local_files_only": local_files_only}
        self.processor = tf.AutoProcessor.from_pretrained(model, **kw)
        self.model = tf.AutoModelForImageTextToText.from_pretrained(model, **kw).to(device).eval()
        self.device = torch.device(device)
        self.max_new_tokens = max_new_tokens
        self.name = name
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)

    # ------------------------------------------------------------------ prompting
    def _text(self, prompt: str, with_image: bool) -> str:
        content: list[dict[str, str]] = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": prompt}]
        if getattr(self.processor, "chat_template", None):
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True)
        token = getattr(self.processor, "image_token", "<image>")
        return f"{token}\n{prompt}" if with_image else prompt

    def _inputs(self, image: ImageLike, prompt: str) -> dict[str, Any]:
        if image is None:
            return dict(self.processor(text=self._text(prompt, False), return_tensors="pt"))
        return dict(self.processor(images=to_pil(image), text=self._text(prompt, True), return_tensors="pt"))

    def generate(self, image: ImageLike, prompt: str, **gen: Any) -> str:
        """Greedy reply (``gen`` is passed to ``model.generate``, e.g. ``max_new_tokens``)."""
        inputs = self._inputs(image, prompt)
        if isinstance(image, Tensor) and "pixel_values" in inputs and tuple(image.shape[-2:]) == self._size():
            inputs["pixel_values"] = self._normalise(image.float())[None].to(inputs["pixel_values"].dtype)
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        options = {"max_new_tokens": self.max_new_tokens, "do_sample": False, **gen}
        with torch.no_grad():
            out = self.model.generate(**inputs, **options)
        new = out[:, inputs["input_ids"].shape[1]:]
        return str(self.tokenizer.batch_decode(new, skip_special_tokens=True)[0]).strip()

    # ------------------------------------------------------------------ white box
    def _image_processor(self) -> Any:
        ip = getattr(self.processor, "image_processor", None)
        if ip is None:
            raise NotImplementedError(f"{type(self.processor).__name__} has no image processor")
        return ip

    def _size(self) -> tuple[int, int]:
        ip = self._image_processor()
        crop = getattr(ip, "crop_size", None)
        size = crop if crop and getattr(ip, "do_center_crop", False) else getattr(ip, "size", None)
        h = getattr(size, "height", None) if not isinstance(size, dict) else size.get("height")
        w = getattr(size, "width", None) if not isinstance(size, dict) else size.get("width")
        if h is None or w is None:
            edge = getattr(size, "shortest_edge", None) if not isinstance(size, dict) else size.get("shortest_edge")
            if edge is None:
                raise NotImplementedError(f"cannot read a fixed input size from {type(ip).__name__}")
            h = w = int(edge)
        return int(h), int(w)

    def _normalise(self, x: Tensor) -> Tensor:
        ip = self._image_processor()
        mean = torch.tensor(getattr(ip, "image_mean", [0.0, 0.0, 0.0]), dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(getattr(ip, "image_std", [1.0, 1.0, 1.0]), dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std if getattr(ip, "do_normalize", True) else x

    def preprocess(self, image: ImageLike) -> Tensor:
        """The picture resized and cropped as the processor does, ``3 x H x W`` in [0, 1].

        Raises:
            NotImplementedError: the processor tiles or has no fixed input size.
        """
        h, w = self._size()
        pil = to_pil(image)
        scale = max(h / pil.height, w / pil.width)
        resized = pil.resize((max(w, round(pil.width * scale)), max(h, round(pil.height * scale))))
        left, top = (resized.width - w) // 2, (resized.height - h) // 2
        return to_tensor(resized.crop((left, top, left + w, top + h)))

    def _candidate_ids(self, candidates: Sequence[str]) -> list[int]:
        ids = []
        for c in candidates:
            toks = self.tokenizer.encode(c, add_special_tokens=False)
            if not toks:
                raise ValueError(f"candidate {c!r} has no token")
            ids.append(int(toks[0]))
        return ids

    def choice_logits(self, image_tensor: Tensor, prompt: str, candidates: Sequence[str]) -> Tensor:
        """Next-token logits of the candidates' first tokens after the prompt (differentiable in the picture)."""
        inputs = self._inputs(to_pil(image_tensor.detach().clamp(0, 1)), prompt)
        if "pixel_values" not in inputs or inputs["pixel_values"].dim() != 4 or inputs["pixel_values"].shape[0] != 1:
            raise NotImplementedError(f"{type(self.processor).__name__} does not give one [1, 3, H, W] picture")
        if tuple(inputs["pixel_values"].shape[-2:]) != tuple(image_tensor.shape[-2:]):
            raise NotImplementedError("the picture must come from preprocess() (its size differs from the processor's)")
        inputs["pixel_values"] = self._normalise(image_tensor.float())[None].to(self.device)
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        logits = self.model(**inputs).logits[0, -1]
        return logits[torch.tensor(self._candidate_ids(candidates), device=logits.device)]


register_adapter("hf", HuggingFaceAdapter, help="a Hugging Face image-text-to-text model (--model: folder or hub id)",
                 options=("model", "max_new_tokens", "device", "local_files_only", "name"))
