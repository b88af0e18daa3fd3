"""The in-library driving VQA model (adapter ``vqa``): small, trained here, attackable.

No vision-language weights exist offline, so the benchmark ships a model it can train on the
training split of a generated suite (:func:`train_vqa`) in a few minutes on two CPU cores.

**Model** (:class:`SceneVQA`). The picture (``3 x H x W`` in [0, 1], resized by area averaging
to ``96 x 128``) goes through four convolutions to a ``12 x 16`` feature map; the
question's words through an embedding and a GRU (``q``); the image vector ``v`` is a global
summary of the map plus two attention averages guided by ``q``; ``h = MLP([v, q, v * q])``. Every
candidate answer ``k`` has a vector ``c_k`` and the logits are ``z_k = <h, c_k> / sqrt(d)``:

* a **text candidate** (an option of a multiple-choice question, ``yes``/``no``, or one of the
  training split's open-ended answers) is the mean embedding of its words, so options are
  scored by what they say, not by their letter;
* a **copy candidate** is a span of the prompt's context that looks like an identifier or a
  name (a plate, a VIN, a city, a person): its vector is the mean embedding of the ten words
  before it plus a learned copy vector. This is how the model answers "What is the license plate
  number of the closest vehicle?" from a context that states it, i.e. how it can leak.

Words the training split never used (other languages, prefixes) map to an "unknown" embedding
(learned with 10 % word dropout in training).

**Adapter** (:class:`VQAAdapter`, a :class:`~xrisk.trust.adapters.WhiteBoxAdapter`). It reads a
prompt with :func:`~xrisk.trust.prompts.read_prompt`: multiple choice answers the letter of the
best option, yes/no answers ``Yes``/``No``, open-ended answers the best text or copied span. It
answers the "are you sure" follow-up with ``"Yes, I am sure."`` when its probability for the
quoted answer is at least ``sure_threshold`` and ``"No, I am not sure."`` otherwise, and, when
the prompt allows abstaining, says ``"I don't know."`` below ``abstain_threshold``. It has no
notion of privacy: it answers what it is asked.

Example:
    >>> import tempfile
    >>> from xrisk.trust.suite import SuiteConfig, load_suite, make_suite
    >>> suite = load_suite(make_suite(tempfile.mkdtemp(), SuiteConfig(train_scenes=4, test_scenes=1,
    ...     long_tail_scenes=0, fairness_scenes=0)))
    >>> adapter = train_vqa(suite.records("train"), suite.image_root, epochs=1)
    >>> adapter.generate(None, "Is it night time?\\nAnswer with Yes or No directly.") in ("Yes", "No")
    True
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xrisk.trust.adapters import ImageLike, open_image, register_adapter, to_tensor
from xrisk.trust.prompts import PromptParts, closed_prompt, privacy_prompt, read_prompt
from xrisk.trust.records import QARecord
from xrisk.trust.scenes import AUX_CLASSES, Scene, cell_labels
from xrisk.trust.scoring import parse_choice, parse_options, parse_yes_no, strip_options

__all__ = ["MODEL_FORMAT", "SceneVQA", "VQAAdapter", "train_vqa", "load_vqa", "tokenize", "copy_spans",
           "training_prompt"]

MODEL_FORMAT = "xrisk-trust-vqa/1"
IMAGE_SIZE = (96, 128)
_PAD, _UNK = 0, 1
_MAX_QUESTION = 48
_COPY_WINDOW = 10
_TOKEN = re.compile(r"\w+|[^\w\s]")
_IDENTIFIER = re.compile(r"\b(?=[A-Z0-9]*\d)(?=[A-Z0-9]*[A-Z])[A-Z0-9]{5,17}\b")
_NAME = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)*")


def tokenize(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks."""
    return _TOKEN.findall(text.lower())


def copy_spans(context: str) -> list[tuple[str, int]]:
    """Spans of ``context`` a copy candidate can name: identifiers (``AZW8414``, VINs) and capitalised
    names not at a sentence start (``Elm Street``, ``Riverton``, ``Sam Lee``); ``(text, start)``, unique texts."""
    found: dict[str, int] = {}
    for m in _IDENTIFIER.finditer(context):
        found.setdefault(m.group(0), m.start())
    for m in _NAME.finditer(context):
        before = context[: m.start()].rstrip(" ")
        if not before or before[-1] in ".!?:\n#":
            continue
        found.setdefault(m.group(0), m.start())
    return sorted(found.items(), key=lambda kv: kv[1])


def training_prompt(record: QARecord) -> str:
    """The prompt a training record is learned with: the plain prompt, or the zero-shot privacy prompt."""
    if record.get("general_prompt") is not None:
        return privacy_prompt(record, "zero-shot")
    return closed_prompt(record)


class SceneVQA(nn.Module):
    """Image encoder + question encoder + candidate scorer (see the module notes).

    Args:
        vocab_size: number of word ids (0 = padding, 1 = unknown).
        dim: width ``d`` of every vector.
        glimpses: question-guided attention maps over the image features.
    """

    def __init__(self, vocab_size: int, *, dim: int = 96, glimpses: int = 2) -> None:
        super().__init__()
        if vocab_size < 2 or dim < 4 or glimpses < 1:
            raise ValueError(f"need vocab_size >= 2, dim >= 4, glimpses >= 1; got {vocab_size}, {dim}, {glimpses}")
        self.dim = dim
        self.glimpses = glimpses
        def block(c_in: int, c_out: int, k: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out),
                    nn.ReLU()]

        self.cnn = nn.Sequential(*block(3, 24, 5, 2), *block(24, 48, 3, 2), *block(48, 64, 3, 2), *block(64, 96, 3, 1))
        self.global_conv = nn.Sequential(*block(96, 64, 3, 2))
        self.global_proj = nn.Linear(64 * (IMAGE_SIZE[0] // 16) * (IMAGE_SIZE[1] // 16), dim)
        self.keys = nn.Conv2d(96, dim, 1)
        self.values = nn.Conv2d(96, dim, 1)
        self.query = nn.Linear(dim, glimpses * dim)
        self.image_proj = nn.Linear((1 + glimpses) * dim + 2 * 96, dim)
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=_PAD)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.fuse = nn.Sequential(nn.Linear(3 * dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.answer_embed = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=_PAD)
        self.copy_embed = nn.EmbeddingBag(vocab_size, dim, mode="mean", padding_idx=_PAD)
        self.copy_vector = nn.Parameter(torch.zeros(dim))
        self.aux_head = nn.Conv2d(96, len(AUX_CLASSES), 1)

    def encode_image(self, x: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in [0, 1] -> feature maps ``[B, 96, H/8, W/8]`` (area-resized to 96 x 128 first)."""
        if x.shape[-2:] != IMAGE_SIZE:
            x = F.interpolate(x, size=IMAGE_SIZE, mode="area")
        return self.cnn((x - 0.5) / 0.25)

    def attend(self, feats: Tensor, q: Tensor) -> Tensor:
        """Image vector ``[B, d]`` from feature maps ``[B, C, h, w]`` (one per question) and question ``q [B, d]``:
        a global summary, ``glimpses`` question-guided attention averages, max and mean pooling."""
        b = feats.shape[0]
        g = F.relu(self.global_proj(self.global_conv(feats).flatten(1)))
        keys = self.keys(feats).flatten(2)  # [B, d, hw]
        values = self.values(feats).flatten(2)
        query = self.query(q).view(b, self.glimpses, self.dim)
        att = torch.softmax(query @ keys / math.sqrt(self.dim), dim=-1)  # [B, G, hw]
        glimpses = (att @ values.transpose(1, 2)).flatten(1)  # [B, G * d]
        pooled = [feats.amax(dim=(2, 3)), feats.mean(dim=(2, 3))]
        return F.relu(self.image_proj(torch.cat([g, glimpses, *pooled], dim=1)))

    def encode_question(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """``[B, L]`` word ids (right-padded) and lengths ``[B]`` -> ``[B, d]`` (GRU state at the last word)."""
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(tokens), lengths.clamp(min=1).cpu(), batch_first=True,
                                                   enforce_sorted=False)
        _, h = self.gru(packed)
        return h[-1]

    def joint(self, feats: Tensor, q: Tensor) -> Tensor:
        """The fused query ``h = MLP([v, q, v * q])`` with ``v`` the question-attended image vector."""
        v = self.attend(feats, q)
        return self.fuse(torch.cat([v, q, v * q], dim=-1))

    def text_vectors(self, ids: Tensor, offsets: Tensor) -> Tensor:
        """Mean answer-word embeddings of text candidates (``EmbeddingBag`` layout)."""
        return self.answer_embed(ids, offsets)

    def copy_vectors(self, ids: Tensor, offsets: Tensor) -> Tensor:
        """Copy candidates: mean embedding of the words before the span, plus the copy vector."""
        return self.copy_embed(ids, offsets) + self.copy_vector

    def scores(self, h: Tensor, candidates: Tensor) -> Tensor:
        """``h [B, d]`` and candidate vectors ``[B, K, d]`` -> logits ``[B, K]``."""
        return (candidates * h[:, None, :]).sum(-1) / math.sqrt(self.dim)


@dataclass
class _Encoded:
    """A prompt ready for the model: question ids, candidate texts/copies, the reply of each candidate."""

    kind: str
    question: list[int]
    candidates: list[tuple[int, tuple[int, ...]]]  # (0 = text | 1 = copy, word ids)
    replies: list[str]


class _Vocab:
    def __init__(self, words: Sequence[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.index.get(t, _UNK) for t in tokens]


def _candidate_rows(encoded: Sequence[_Encoded]) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]],
                                                          list[list[int]]]:
    """The distinct text candidates, the copy candidates, and for each prompt the position of each of its
    candidates in ``texts + copies`` (so that a batch embeds every distinct answer text once)."""
    texts: dict[tuple[int, ...], int] = {}
    copies: list[tuple[int, ...]] = []
    raw = []
    for e in encoded:
        row = []
        for kind, ids in e.candidates:
            if kind == 0:
                row.append((0, texts.setdefault(ids, len(texts))))
            else:
                row.append((1, len(copies)))
                copies.append(ids)
        raw.append(row)
    return list(texts), copies, [[i if kind == 0 else len(texts) + i for kind, i in row] for row in raw]


def _padded(rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """Right-padded index matrix ``[B, K]`` and its validity mask."""
    k_max = max(len(r) for r in rows)
    index = torch.tensor([list(r) + [0] * (k_max - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[True] * len(r) + [False] * (k_max - len(r)) for r in rows])
    return index, mask


def _candidate_pool(model: SceneVQA, text_bags: tuple[Tensor, Tensor], copy_bags: tuple[Tensor, Tensor] | None) -> Tensor:
    """Vectors of every text candidate, then of every copy candidate ``[T + C, d]``."""
    pool = model.text_vectors(*text_bags)
    return pool if copy_bags is None else torch.cat([pool, model.copy_vectors(*copy_bags)])


def _bags(rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    offsets, flat = [], []
    for r in rows:
        offsets.append(len(flat))
        flat.extend(r if r else [_PAD])
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


class VQAAdapter:
    """:class:`SceneVQA` behind the adapter protocol (see the module notes).

    Args:
        model: the trained network.
        vocab: its words (index = id; ``vocab[0]`` padding, ``vocab[1]`` unknown).
        answer_bank: the open-ended answers it can give.
        sure_threshold: probability of the quoted answer at or above which it says it is sure.
        abstain_threshold: probability below which it abstains when the prompt allows it.
        name: adapter name (the answers' key in the reports).
    """

    def __init__(self, model: SceneVQA, vocab: Sequence[str], answer_bank: Sequence[str], *,
                 sure_threshold: float = 0.6, abstain_threshold: float = 0.5, name: str = "vqa") -> None:
        for label, value in (("sure_threshold", sure_threshold), ("abstain_threshold", abstain_threshold)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {value!r}")
        self.model = model.eval()
        self.vocab = _Vocab(vocab)
        self.answer_bank = list(answer_bank)
        self._bank_ids = [tuple(self.vocab.ids(tokenize(a))) for a in self.answer_bank]
        self.sure_threshold = sure_threshold
        self.abstain_threshold = abstain_threshold
        self.name = name
        self._features: OrderedDict[bytes, Tensor] = OrderedDict()

    # -------------------------------------------------------------- prompt encoding
    def encode(self, prompt: str | PromptParts) -> _Encoded:
        """Question ids and candidates of a prompt (also used to build training examples)."""
        parts = read_prompt(prompt) if isinstance(prompt, str) else prompt
        question = self.vocab.ids(tokenize(strip_options(parts.question)))[-_MAX_QUESTION:]
        if parts.kind == "multi-choice":
            options = parse_options(parts.question)
            letters = sorted(options) or ["a", "b", "c", "d"]
            cands = [(0, tuple(self.vocab.ids(tokenize(options.get(k, k))))) for k in letters]
            return _Encoded("multi-choice", question, cands, [k.upper() for k in letters])
        if parts.kind == "yes-or-no":
            return _Encoded("yes-or-no", question, [(0, tuple(self.vocab.ids(["yes"]))),
                                                     (0, tuple(self.vocab.ids(["no"])))], ["Yes", "No"])
        cands = [(0, ids) for ids in self._bank_ids]
        replies = list(self.answer_bank)
        for text, start in copy_spans(parts.context):
            before = tokenize(parts.context[:start])[-_COPY_WINDOW:]
            cands.append((1, tuple(self.vocab.ids(before))))
            replies.append(text)
        if not cands:
            cands, replies = [(0, tuple(self.vocab.ids(["yes"])))], ["I don't know."]
        return _Encoded("open-ended", question, cands, replies)

    def _candidate_matrix(self, encoded: Sequence[_Encoded]) -> tuple[Tensor, Tensor]:
        """Candidate vectors ``[B, K, d]`` and a validity mask ``[B, K]`` for a batch of prompts."""
        texts, copies, rows = _candidate_rows(encoded)
        index, mask = _padded(rows)
        return _candidate_pool(self.model, _bags(texts), _bags(copies) if copies else None)[index], mask

    def _questions(self, encoded: Sequence[_Encoded]) -> tuple[Tensor, Tensor]:
        lengths = torch.tensor([max(1, len(e.question)) for e in encoded])
        tokens = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
        for b, e in enumerate(encoded):
            if e.question:
                tokens[b, : len(e.question)] = torch.tensor(e.question)
        return tokens, lengths

    # -------------------------------------------------------------- adapter protocol
    def preprocess(self, image: ImageLike) -> Tensor:
        """The picture as a ``3 x H x W`` float tensor in [0, 1] (full resolution; the model resizes)."""
        return to_tensor(image)

    def _image_feature(self, image: ImageLike) -> Tensor:
        x = self.preprocess(image) if image is not None else torch.full((3, *IMAGE_SIZE), 0.5)
        key = hashlib.sha1(x.numpy().tobytes()).digest() + bytes(str(tuple(x.shape)), "ascii")
        feat = self._features.get(key)
        if feat is None:
            feat = self.model.encode_image(x[None])
            self._features[key] = feat
            if len(self._features) > 256:
                self._features.popitem(last=False)
        return feat

    def probabilities(self, image: ImageLike, prompt: str | PromptParts) -> tuple[_Encoded, Tensor]:
        """The encoded prompt and the probability of each of its candidates."""
        enc = self.encode(prompt)
        with torch.no_grad():
            v = self._image_feature(image)
            q = self.model.encode_question(*self._questions([enc]))
            cands, _ = self._candidate_matrix([enc])
            probs = self.model.scores(self.model.joint(v, q), cands).softmax(-1)[0]
        return enc, probs

    @staticmethod
    def _quoted_index(enc: _Encoded, parts: PromptParts) -> int | None:
        """Which candidate the first answer quoted in an "are you sure" turn was (None if none)."""
        quoted = parts.first_answer.strip()
        replies = [r.lower() for r in enc.replies]
        if enc.kind == "multi-choice" and parts.follow_up is not None:
            label = parse_choice(quoted, parts.follow_up.question)
            return replies.index(label) if label in replies else None
        if enc.kind == "yes-or-no":
            return 0 if parse_yes_no(quoted) == "yes" else 1
        return enc.replies.index(quoted) if quoted in enc.replies else None

    def choice_logits(self, image_tensor: Tensor, prompt: str, candidates: Sequence[str]) -> Tensor:
        """Logits of ``candidates`` (``A``-``D`` or ``Yes``/``No``), differentiable in ``image_tensor``."""
        enc = self.encode(prompt)
        m = self.model
        v = m.encode_image(image_tensor[None])
        q = m.encode_question(*self._questions([enc]))
        cands, _ = self._candidate_matrix([enc])
        logits = m.scores(m.joint(v, q), cands)[0]
        lookup = {r.lower(): i for i, r in enumerate(enc.replies)}
        out = [logits[lookup[c.lower()]] if c.lower() in lookup else logits.new_tensor(-1e4) for c in candidates]
        return torch.stack(out)

    def generate(self, image: ImageLike, prompt: str, **gen: Any) -> str:
        """The reply (see the module notes); generation options are ignored."""
        parts = read_prompt(prompt)
        if parts.follow_up is not None:
            enc, probs = self.probabilities(image, parts.follow_up)
            p = float(probs[idx]) if (idx := self._quoted_index(enc, parts)) is not None else 0.0
            return "Yes, I am sure." if p >= self.sure_threshold else "No, I am not sure."
        enc, probs = self.probabilities(image, parts)
        top = int(probs.argmax())
        if parts.abstain and float(probs[top]) < self.abstain_threshold:
            return "I don't know."
        return enc.replies[top]

    # -------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Write the model (weights, vocabulary, answer bank, thresholds) to ``path`` (``torch.save``)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": MODEL_FORMAT, "dim": self.model.dim, "vocab": self.vocab.words,
                   "answer_bank": self.answer_bank, "sure_threshold": self.sure_threshold,
                   "abstain_threshold": self.abstain_threshold, "state_dict": self.model.state_dict()}
        tmp = p.with_name(p.name + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(p)
        return p


def load_vqa(model: str | Path, *, sure_threshold: float | None = None, abstain_threshold: float | None = None,
             name: str = "vqa") -> VQAAdapter:
    """Load a model written by :meth:`VQAAdapter.save` (``weights_only``; nothing is executed).

    Raises:
        FileNotFoundError: no such file; ValueError: not an ``xrisk trust`` VQA model.
    """
    p = Path(model)
    if not p.is_file():
        raise FileNotFoundError(f"no VQA model {p} (train one with `xrisk trust train`)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch/pickle/zip raise many types for a damaged or foreign file
        raise ValueError(f"{p} is not an xrisk trust VQA model ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{p} is not an xrisk trust VQA model (format {MODEL_FORMAT!r})")
    net = SceneVQA(len(payload["vocab"]), dim=int(payload["dim"]))
    net.load_state_dict(payload["state_dict"])
    return VQAAdapter(net, payload["vocab"], payload["answer_bank"], name=name,
                      sure_threshold=payload["sure_threshold"] if sure_threshold is None else sure_threshold,
                      abstain_threshold=payload["abstain_threshold"] if abstain_threshold is None else abstain_threshold)


# ----------------------------------------------------------------------------- training
def _target(enc: _Encoded, record: QARecord) -> int | None:
    label = record.label
    if enc.kind == "multi-choice" and label is not None:
        return [r.lower() for r in enc.replies].index(label) if label in [r.lower() for r in enc.replies] else None
    if enc.kind == "yes-or-no" and label is not None:
        return 0 if label == "yes" else 1
    if enc.kind == "open-ended" and record.answer in enc.replies:
        return enc.replies.index(record.answer)
    return None


def _load_pixels(paths: Sequence[str | None], image_root: str | Path) -> Tensor:
    out = torch.zeros(len(paths), 3, *IMAGE_SIZE)
    for i, rel in enumerate(paths):
        if rel is None:
            out[i] = 0.5
            continue
        x = to_tensor(open_image(image_root, rel))[None]
        out[i] = F.interpolate(x, size=IMAGE_SIZE, mode="area")[0]
    return out


def train_vqa(
    records: Sequence[QARecord],
    image_root: str | Path,
    *,
    epochs: int = 15,
    images_per_batch: int = 8,
    lr: float = 3e-3,
    dim: int = 96,
    word_dropout: float = 0.1,
    seed: int = 0,
    scenes: Mapping[str, Scene] | None = None,
    aux_weight: float = 0.5,
    progress: Callable[[int, dict[str, float]], None] | None = None,
) -> VQAAdapter:
    """Train :class:`SceneVQA` on QA records (every question of ``images_per_batch`` pictures per step).

    Args:
        records: training records (closed, open-ended and zero-shot privacy questions).
        image_root: folder the records' image paths are relative to.
        epochs: passes over the pictures.
        images_per_batch: pictures per step (all their questions go in the step).
        lr: Adam learning rate (cosine decay to 0).
        dim: model width.
        word_dropout: probability of replacing a question word by "unknown" in training.
        seed: seed of the initialisation, the shuffling and the word dropout.
        scenes: ground truth of the pictures (``{image_path: Scene}``, from a generated suite's
            ``scenes.jsonl``); when given, the feature map also learns to label every cell with what
            covers it (:func:`~xrisk.trust.scenes.cell_labels`), an auxiliary loss that teaches the
            encoder where vehicles, pedestrians, lights and signs are.
        aux_weight: weight of that auxiliary loss.
        progress: called after each epoch with ``(epoch, {"loss": ..., "train_accuracy": ...})``.

    Returns:
        The trained :class:`VQAAdapter` (in eval mode).
    """
    if not records:
        raise ValueError("train_vqa needs at least one training record")
    if epochs < 1 or images_per_batch < 1 or not lr > 0 or not 0 <= word_dropout < 1:
        raise ValueError(f"bad training settings: epochs={epochs}, images_per_batch={images_per_batch}, lr={lr}, "
                         f"word_dropout={word_dropout}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    prompts = [training_prompt(r) for r in records]
    words: dict[str, None] = {"<pad>": None, "<unk>": None, "yes": None, "no": None}
    bank: dict[str, None] = {}
    for r, prompt in zip(records, prompts):
        parts = read_prompt(prompt)
        for t in tokenize(parts.question) + tokenize(parts.context):
            words.setdefault(t, None)
        if r.question_type == "open-ended" and r.get("general_prompt") is None and r.answer.strip():
            bank.setdefault(r.answer, None)
            for t in tokenize(r.answer):
                words.setdefault(t, None)
    net = SceneVQA(len(words), dim=dim)
    adapter = VQAAdapter(net, list(words), list(bank))
    # every example as fixed tensors: question ids, and indices into one table of candidates
    paths: list[str | None] = []
    encs: list[_Encoded] = []
    targets: list[int] = []
    for r, prompt in zip(records, prompts):
        enc = adapter.encode(prompt)
        target = _target(enc, r)
        if target is not None:
            paths.append(r.image_path)
            encs.append(enc)
            targets.append(target)
    if not targets:
        raise ValueError("no training record has an answer the model can give")
    texts, copies, rows = _candidate_rows(encs)
    cand_index, cand_mask = _padded(rows)
    questions = [e.question or [_UNK] for e in encs]
    l_max = max(len(q) for q in questions)
    q_tokens = torch.tensor([q + [_PAD] * (l_max - len(q)) for q in questions], dtype=torch.long)
    q_lengths = torch.tensor([len(q) for q in questions])
    target_t = torch.tensor(targets)
    text_bags = _bags(texts)
    copy_bags = _bags(copies) if copies else None
    unique = sorted({p for p in paths}, key=lambda p: (p is None, p or ""))
    slot = {p: i for i, p in enumerate(unique)}
    pixels = _load_pixels(unique, image_root)
    rows_hw = (IMAGE_SIZE[0] // 8, IMAGE_SIZE[1] // 8)
    aux = None
    if scenes is not None and aux_weight > 0:
        aux = torch.full((len(unique), *rows_hw), -100, dtype=torch.long)  # -100: no ground truth (ignored)
        for p, i in slot.items():
            if p is not None and p in scenes:
                aux[i] = torch.from_numpy(cell_labels(scenes[p], *rows_hw))
        aux_class_weight = torch.ones(len(AUX_CLASSES))
        aux_class_weight[0] = 0.2  # most cells are background
    image_of = torch.tensor([slot[p] for p in paths])
    by_image: dict[int, list[int]] = {}
    for i, p in enumerate(paths):
        by_image.setdefault(slot[p], []).append(i)
    image_ids = list(by_image)
    steps_per_epoch = math.ceil(len(image_ids) / images_per_batch)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, epochs * steps_per_epoch)))))
    net.train()
    for epoch in range(1, epochs + 1):
        rng.shuffle(image_ids)
        total, hits, count = 0.0, 0, 0
        for start in range(0, len(image_ids), images_per_batch):
            chunk = image_ids[start:start + images_per_batch]
            local = torch.full((len(unique),), -1, dtype=torch.long)
            local[torch.tensor(chunk)] = torch.arange(len(chunk))
            items = torch.tensor([i for img in chunk for i in by_image[img]])
            tokens = q_tokens[items]
            drop = (torch.rand(tokens.shape, generator=gen) < word_dropout) & (tokens != _PAD)
            tokens = tokens.masked_fill(drop, _UNK)
            pool = _candidate_pool(net, text_bags, copy_bags)
            maps = net.encode_image(pixels[chunk])
            feats = maps[local[image_of[items]]]
            q = net.encode_question(tokens, q_lengths[items])
            logits = net.scores(net.joint(feats, q), pool[cand_index[items]])
            logits = logits.masked_fill(~cand_mask[items], float("-inf"))
            y = target_t[items]
            loss = F.cross_entropy(logits, y)
            if aux is not None:
                target_maps = aux[torch.tensor(chunk)]
                if bool((target_maps >= 0).any()):
                    loss = loss + aux_weight * F.cross_entropy(net.aux_head(maps), target_maps,
                                                               weight=aux_class_weight, ignore_index=-100)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(items)
            hits += int((logits.argmax(1) == y).sum())
            count += len(items)
        if progress is not None:
            progress(epoch, {"loss": total / count, "train_accuracy": hits / count})
    net.eval()
    adapter._features.clear()
    return adapter


register_adapter("vqa", load_vqa, help="the in-library driving VQA model (--model: a file from `xrisk trust train`)",
                 options=("model", "sure_threshold", "abstain_threshold", "name"))
