"""Myna at small scale (issue 14): the speed of token masking, and the paper's key-detection claims.

(a) **Speed and memory** of one end-to-end training step of the paper's encoder (``vit-s-32``, 21.4M
    parameters, 128 mels x 96 frames, 48 tokens per view) at mask 0.9 (5 tokens kept) vs no mask, for square
    and vertical patches: two random crops per item sliced from the cached mel spectrograms (the front end runs
    once per track), both views through the encoder, ``GlobalContrastiveLoss`` (SogCLR, unimodal), backward,
    Adam step. Batch: the largest multiple of 8 whose **activation memory** -- bytes of the tensors autograd
    saves for backward during the forward of both views and the loss, unique storages, parameters excluded,
    counted with ``torch.autograd.graph.saved_tensors_hooks`` -- fits the budget (``--budget-mib``, 512 MiB);
    parameters, gradients and Adam moments (4 x 85 MiB) come on top in every setting alike. The steps are timed
    interleaved in one process, one thread (paired rounds); throughput is clips/s. Goal: >= 8x at mask 0.9.
    Context rows: the same step with the front end computed per crop (torch STFT + mel of each 48,640-sample
    waveform crop) instead of cached.
(b) **Key detection and sample categories**: encoders (``mini`` preset: dim 64, depth 3, 4 heads) pretrained
    on Debian ``singularity-music`` (16 tracks cut into 20 s items, log-mel, batch 32, Adam lr 1e-3, SogCLR
    tau 0.1 / gamma 0.9) at **equal training time** (``--cpu-seconds`` of process CPU time for the training steps
    of every run): square / vertical / hybrid patches with mask 0.9, and square / vertical patches without
    masking but with pitch-shifted views (each view shifted by a random whole number of semitones in [-4, 4],
    ``MelSpectrogram.shift_pitch`` on the cached log-mel, so both arms read the same cached spectrograms),
    and square / vertical patches with mask 0.9 **and** pitch-shifted views (the shift's effect at about equal
    steps), 3 seeds each, plus untrained encoders of each patch kind as the floor. Frozen features are probed (8-setting grid of linear/MLP probes, best validation
    setting and epoch, :mod:`xrisk.metrics.probe`) on (1) key detection: 688 clips of 344 Bach scores from the
    music21 corpus rendered with synthetic timbres at two transpositions each (exact keys), split by piece,
    ``mir_eval`` weighted key score; (2) the 165 Sonic Pi samples, 14 categories, accuracy.

Claims (arXiv 2502.12511) checked with a verdict line each: vertical patches help key detection; masking keeps
pitch information where pitch-shifting destroys it (key score, masking vs pitch shift at equal training time).

    .venv/bin/python bench/fidelity_myna.py              # full run (97 min at load 8-12: (a) 7.5, (b) 89)
    .venv/bin/python bench/fidelity_myna.py --quick      # smoke run (a few minutes), prints only
    .venv/bin/python bench/fidelity_myna.py --parts a    # speed only
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

import _common

SECTION = "myna"
SUBSECTIONS = ("myna-speed", "myna-fidelity")
SING = Path("/usr/share/games/singularity/music")
SONIC = Path("/usr/share/sonic-pi/samples")


@dataclass
class Config:
    quick: bool
    seeds: tuple[int, ...] = (0, 1, 2)
    # (a)
    speed_preset: str = "vit-s-32"
    budget_mib: float = 512.0
    rounds: int = 3
    warmup_rounds: int = 1
    # (b)
    preset: str = "mini"
    cpu_seconds: float = 60.0
    pitch_shift: int = 4
    probe_epochs: int = 30


def quick_config() -> Config:
    return Config(quick=True, seeds=(0,), speed_preset="tiny", budget_mib=16.0, rounds=1, warmup_rounds=1,
                  preset="tiny", cpu_seconds=5.0, probe_epochs=3)


# --------------------------------------------------------------------------------------------- (a) speed
def saved_bytes(fn: Callable[[], Tensor], params: list[Tensor]) -> tuple[int, Tensor]:
    """Bytes autograd saves for backward while ``fn()`` runs (unique storages, parameters excluded)."""
    skip = {p.untyped_storage().data_ptr() for p in params}
    seen: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in skip:
            seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


class Stepper:
    """One training step of ``model`` on ``batch`` items: crops (cached mel or per-crop front end), both views
    through the encoder at ``mask``, SogCLR, backward, Adam."""

    def __init__(self, pairs, waves, patch: str, preset: str, mask: float, batch: int, per_crop: bool, seed: int):
        from xrisk.losses import GlobalContrastiveLoss
        from xrisk.models.audio import MelSpectrogram, SpectrogramViT

        torch.manual_seed(seed)
        self.pairs, self.waves, self.mask, self.batch, self.per_crop = pairs, waves, mask, batch, per_crop
        self.model = SpectrogramViT.from_preset(preset, patch=patch, out_dim=128)
        self.loss = GlobalContrastiveLoss(len(pairs), mode="unimodal", tau=0.1, gamma=0.9, eps=1e-8)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, weight_decay=1e-5)
        self.front_end = MelSpectrogram()
        self.g = torch.Generator().manual_seed(seed)

    def views(self, index: Tensor) -> tuple[Tensor, Tensor]:
        if not self.per_crop:
            a, b, _ = self.pairs.batch(index, self.g)
            return a, b
        n = (self.pairs.crop_frames - 1) * 512
        tracks = self.pairs.items[index, 0].tolist()
        out = []
        for starts in self.pairs.crop_starts(index, self.g):
            wave = torch.stack([self.waves[j][f * 512 : f * 512 + n] for j, f in zip(tracks, starts.tolist())])
            out.append(torch.log1p(self.front_end(wave)))  # the cached rows hold log1p(mel) too
        return out[0], out[1]

    def forward(self) -> Tensor:
        index = torch.randperm(len(self.pairs), generator=self.g)[: self.batch]
        a, b = self.views(index)
        za = self.model(a, mask_ratio=self.mask, generator=self.g)
        zb = self.model(b, mask_ratio=self.mask, generator=self.g)
        return self.loss(za, zb, index)

    def __call__(self) -> None:
        loss = self.forward()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def activation_bytes(self) -> int:
        nbytes, loss = saved_bytes(self.forward, list(self.model.parameters()))
        loss.backward()
        self.opt.zero_grad(set_to_none=True)
        return nbytes


def largest_batch(make: Callable[[int], Stepper], budget: float, limit: int) -> tuple[int, int]:
    """Largest multiple of 8 (<= limit) whose activation bytes fit ``budget``: a linear fit from two small
    batches, then checked (and lowered by 8 until it fits). Returns ``(batch, bytes)``."""
    b1, b2 = 8, 16
    m1, m2 = make(b1).activation_bytes(), make(b2).activation_bytes()
    per, fixed = (m2 - m1) / (b2 - b1), m1 - (m2 - m1) / (b2 - b1) * b1
    batch = max(8, min(limit, int((budget - fixed) / per) // 8 * 8))
    while True:
        used = make(batch).activation_bytes()
        if used <= budget or batch <= 8:
            return batch, used
        batch -= 8


def part_a(cfg: Config, pairs, waves, source: str, log: Callable[[str], None]) -> str:
    from xrisk.models.audio import PRESETS, SpectrogramViT

    budget = cfg.budget_mib * 2**20
    steps: dict[str, Stepper] = {}
    facts: dict[str, tuple[int, int]] = {}
    for patch in ("square", "vertical"):
        for mask in (0.0, 0.9):
            def make(b: int, patch: str = patch, mask: float = mask) -> Stepper:
                return Stepper(pairs, waves, patch, cfg.speed_preset, mask, b, False, 0)
            batch, used = largest_batch(make, budget, len(pairs))
            facts[f"{patch}/{mask}"] = (batch, used)
            log(f"(a) {patch} mask {mask}: batch {batch}, activations {used / 2**20:.0f} MiB")
            steps[f"{patch}/{mask}/cached"] = make(batch)
            if waves is not None:
                steps[f"{patch}/{mask}/per-crop"] = Stepper(pairs, waves, patch, cfg.speed_preset, mask, batch, True, 0)
    load_start = _common.loadavg()
    times = _common.time_interleaved(steps, rounds=cfg.rounds, steps_per_round=1, warmup_rounds=cfg.warmup_rounds)
    load_end = _common.loadavg()
    params = sum(p.numel() for p in SpectrogramViT.from_preset(cfg.speed_preset, patch="square", out_dim=128).parameters())
    rows = []
    verdicts = []
    for patch in ("square", "vertical"):
        for front in ("cached", "per-crop"):
            if f"{patch}/0.0/{front}" not in times:
                continue
            t0, t9 = times[f"{patch}/0.0/{front}"], times[f"{patch}/0.9/{front}"]
            b0, b9 = facts[f"{patch}/0.0"][0], facts[f"{patch}/0.9"][0]
            ratios = [(b9 / y) / (b0 / x) for x, y in zip(t0, t9)]  # paired by round
            for mask, b, t in ((0.0, b0, t0), (0.9, b9, t9)):
                rows.append([patch, front, mask, b, f"{facts[f'{patch}/{mask}'][1] / 2**20:.0f}",
                             f"{statistics.median(t):.2f}", f"{b / statistics.median(t):.1f}",
                             f"**{statistics.median(ratios):.2f}x** ({min(ratios):.2f}-{max(ratios):.2f})" if mask else ""])
            if front == "cached":
                med = statistics.median(ratios)
                met = med >= 8.0 and min(ratios) >= 8.0
                verdicts.append(f"- {patch} patches: throughput at mask 0.9 is {med:.2f}x no mask (rounds "
                                f"{min(ratios):.2f}x-{max(ratios):.2f}x): **goal {'met' if met else 'not met'}**.")
    dims = PRESETS[cfg.speed_preset]
    return "\n".join([
        "### (a) Speed and memory of masking (one end-to-end training step)",
        "",
        f"Encoder `{cfg.speed_preset}` (dim {dims['dim']}, depth {dims['depth']}, {dims['heads']} heads, MLP "
        f"{dims['mlp_dim']}; {params / 1e6:.1f}M parameters with the 128-d head), 128 mels x 96 frames, 48 tokens per "
        f"view, {source}. Batch = largest multiple of 8 whose activation memory (autograd's saved tensors of the "
        f"forward of both views and the loss) fits {cfg.budget_mib:.0f} MiB. Step = crops + both views + "
        f"GlobalContrastiveLoss + backward + Adam. {cfg.rounds} interleaved rounds after {cfg.warmup_rounds} warm-up "
        f"round(s), one thread; ratio = clips/s at mask 0.9 over clips/s without mask, paired by round (range over "
        f"rounds). Load average {load_start:.2f} at the start, {load_end:.2f} at the end. `cached`: crops sliced "
        "from the mel computed once per track (what `xrisk run myna` does); `per-crop`: the front end (STFT + mel "
        "+ log) computed for every crop of the step.",
        "",
        _common.md_table(["patch", "front end", "mask", "batch", "activations (MiB)", "step (s)", "clips/s",
                          "throughput vs no mask"], rows),
        "",
        *verdicts,
    ])


# --------------------------------------------------------------------------------------------- (b) claims
@dataclass(frozen=True)
class Variant:
    name: str
    patch: str
    mask: float
    pitch_shift: int
    trained: bool = True


def _variants(cfg: Config) -> list[Variant]:
    out = [Variant(f"{p} untrained", p, 0.9, 0, trained=False) for p in ("square", "vertical", "hybrid")]
    out += [Variant(f"{p}, mask 0.9", p, 0.9, 0) for p in ("square", "vertical", "hybrid")]
    out += [Variant(f"{p}, pitch shift ±{cfg.pitch_shift}", p, 0.0, cfg.pitch_shift) for p in ("square", "vertical")]
    out += [Variant(f"{p}, mask 0.9 + pitch shift ±{cfg.pitch_shift}", p, 0.9, cfg.pitch_shift)
            for p in ("square", "vertical")]
    return out


def _fmt(xs: list[float]) -> str:
    m, s = _common.mean_std(xs)
    return f"{m:.3f} ± {s:.3f}"


def _paired_verdict(claim: str, better: list[float], worse: list[float], names: tuple[str, str]) -> str:
    diffs = [a - b for a, b in zip(better, worse)]
    mean = statistics.fmean(diffs)
    if mean > 0 and all(d > 0 for d in diffs):
        verdict = "holds here"
    elif mean <= 0:
        verdict = "does not hold here"
    else:
        verdict = "inconclusive here (the seeds disagree)"
    per_seed = ", ".join(f"{d:+.3f}" for d in diffs)
    return (f"- **{claim}: {verdict}.** {names[0]} minus {names[1]}: mean {mean:+.3f} (per seed {per_seed}).")


def part_b(cfg: Config, tracks, log: Callable[[str], None]) -> str:
    from xrisk.recipes.myna import MynaConfig, build_model, load_probe_task, run_probe, train_myna

    tasks = [load_probe_task("keys", log_mel=True)]
    if SONIC.is_dir():
        tasks.append(load_probe_task("sonic-pi", log_mel=True))
    log(f"(b) probe data: keys {len(tasks[0].mels)} clips" + (f", sonic-pi {len(tasks[1].mels)} clips" if len(tasks) > 1 else ""))
    results: dict[str, dict[str, list[float]]] = {}
    extra: dict[str, dict[str, list[float]]] = {}
    for v in _variants(cfg):
        results[v.name] = {t.name: [] for t in tasks}
        extra[v.name] = {"steps": [], "cpu": []}
        for seed in cfg.seeds:
            config = MynaConfig(data="singularity", patch=v.patch, preset=cfg.preset, mask=v.mask, pitch_shift=v.pitch_shift,
                                batch_size=32, epochs=10**6, lr=1e-3, log_mel=True, probe="none", seed=seed,
                                max_cpu_seconds=cfg.cpu_seconds)
            if v.trained:
                run = train_myna(config, tracks=tracks, probe_tasks=[])
                model = run.model
                extra[v.name]["steps"].append(run.metrics["total_steps"])
                extra[v.name]["cpu"].append(run.metrics["cpu_seconds"])
            else:
                torch.manual_seed(seed)
                model = build_model(config)
            for task in tasks:
                r = run_probe(model, task, frames=96, epochs=cfg.probe_epochs, seed=seed)
                results[v.name][task.name].append(r.test_score)
            log(f"(b) {v.name} seed {seed}: " + ", ".join(f"{t} {s[-1]:.3f}" for t, s in results[v.name].items())
                + (f"; {extra[v.name]['steps'][-1]:.0f} steps" if v.trained else ""))
    rows = []
    for v in _variants(cfg):
        r, e = results[v.name], extra[v.name]
        rows.append([v.name, _fmt(r["keys"]), _fmt(r["sonic-pi"]) if "sonic-pi" in r else "n/a",
                     f"{statistics.fmean(e['steps']):.0f}" if e["steps"] else "0",
                     f"{statistics.fmean(e['cpu']):.0f}" if e["cpu"] else "0"])
    key = {v.name: results[v.name]["keys"] for v in _variants(cfg)}
    ps = f"pitch shift ±{cfg.pitch_shift}"
    verdicts = [
        _paired_verdict("Vertical patches help key detection (pretrained, mask 0.9)", key["vertical, mask 0.9"],
                        key["square, mask 0.9"], ("vertical", "square")),
        _paired_verdict("... and before any training (architecture alone)", key["vertical untrained"],
                        key["square untrained"], ("vertical", "square")),
        _paired_verdict("Masking keeps pitch information where pitch shifting destroys it (square patches)",
                        key["square, mask 0.9"], key[f"square, {ps}"], ("masking", "pitch shift")),
        _paired_verdict("Masking keeps pitch information where pitch shifting destroys it (vertical patches)",
                        key["vertical, mask 0.9"], key[f"vertical, {ps}"], ("masking", "pitch shift")),
        _paired_verdict("Pitch shifting removes pitch information at equal steps (square; mask 0.9 vs mask 0.9 + shift)",
                        key["square, mask 0.9"], key[f"square, mask 0.9 + {ps}"], ("without shift", "with shift")),
        _paired_verdict("Pitch shifting removes pitch information at equal steps (vertical)",
                        key["vertical, mask 0.9"], key[f"vertical, mask 0.9 + {ps}"], ("without shift", "with shift")),
        _paired_verdict("Pretraining with masking improves key detection over the untrained encoder (vertical)",
                        key["vertical, mask 0.9"], key["vertical untrained"], ("pretrained", "untrained")),
        _paired_verdict("Pretraining with masking improves key detection over the untrained encoder (square)",
                        key["square, mask 0.9"], key["square untrained"], ("pretrained", "untrained")),
    ]
    if len(tasks) > 1:
        cat = {v.name: results[v.name]["sonic-pi"] for v in _variants(cfg)}
        verdicts.append(_paired_verdict("Category probe: hybrid pretraining beats the untrained hybrid encoder",
                                        cat["hybrid, mask 0.9"], cat["hybrid untrained"], ("pretrained", "untrained")))
    from xrisk.models.audio import PRESETS

    d = PRESETS[cfg.preset]
    return "\n".join([
        "### (b) Key detection and sample categories (frozen probes)",
        "",
        f"Pretraining: `xrisk.recipes.myna.train_myna`, preset `{cfg.preset}` (dim {d['dim']}, depth {d['depth']}, "
        f"{d['heads']} heads), Debian singularity-music ({len(tracks)} tracks, 20 s items), log-mel, batch 32, "
        f"Adam lr 1e-3, SogCLR tau 0.1 / gamma 0.9, **{cfg.cpu_seconds:.0f} s of process CPU time of training steps "
        f"per run** (equal training time; the steps column is what each variant got), one thread; seeds "
        f"{', '.join(map(str, cfg.seeds))}. Untrained rows: the same encoders at initialisation. Probes: default "
        f"grid of `xrisk.metrics.probe` ({cfg.probe_epochs} epochs each), test score at the best validation "
        "setting and epoch. Keys: 688 clips (15 s) of 344 music21 Bach scores, 2 transpositions each, synthetic "
        "timbres (organ / clarinet / plucked), 60/20/20 split by piece, mir_eval weighted key score (chance about "
        "0.06). Sonic Pi: 165 clips, 14 categories, stratified 60/20/20, accuracy. Mean ± std over seeds.",
        "",
        _common.md_table(["encoder", "key score (test)", "Sonic Pi accuracy (test)", "training steps", "CPU s"], rows),
        "",
        *verdicts,
    ])


# --------------------------------------------------------------------------------------------- main
def _load_tracks(keep_waveforms: bool, log: Callable[[str], None]):
    """Singularity tracks with cached log-mel spectrograms (and the waveforms for the per-crop rows of (a))."""
    from xrisk.data.music import load_singularity_music

    t0 = time.perf_counter()
    tracks = load_singularity_music(min_frames=96, keep_waveforms=keep_waveforms)
    tracks.mels = [torch.log1p(m) for m in tracks.mels]
    log(f"singularity-music: {len(tracks)} tracks, {tracks.total_frames()} frames, {time.perf_counter() - t0:.0f} s")
    return tracks, f"Debian singularity-music ({len(tracks)} tracks)"


def _write(name: str, body: str) -> None:
    text = _common.RESULTS.read_text() if _common.RESULTS.exists() else ""
    if f"<!-- {SECTION}:start -->" not in text:
        inner = "\n\n".join(f"<!-- {s}:start -->\n<!-- {s}:end -->" for s in SUBSECTIONS)
        _common.write_section(SECTION, "## Myna: masked contrastive music representations (issue 14)\n\n" + inner)
    _common.write_section(name, body)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run, prints only")
    p.add_argument("--parts", default="ab", help="which parts to run: 'a', 'b' or 'ab'")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--cpu-seconds", type=float, default=None, help="training CPU seconds per run in (b)")
    p.add_argument("--budget-mib", type=float, default=None, help="activation memory budget of (a)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = quick_config() if args.quick else Config(quick=False)
    if args.seeds:
        cfg.seeds = tuple(args.seeds)
    if args.cpu_seconds:
        cfg.cpu_seconds = args.cpu_seconds
    if args.budget_mib:
        cfg.budget_mib = args.budget_mib
    if not SING.is_dir():
        print("bench/fidelity_myna.py needs the Debian package singularity-music (apt-get install singularity-music); "
              "skipped", file=sys.stderr)
        return 0
    try:
        import librosa  # noqa: F401  (the audio extra)
        import mir_eval  # noqa: F401
        import music21  # noqa: F401
        import soundfile  # noqa: F401
    except ImportError as e:
        print(f"bench/fidelity_myna.py needs the audio extra (pip install -e '.[audio]'): {e}", file=sys.stderr)
        return 1
    t_start = time.perf_counter()
    facts = _common.machine_facts(1)

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", flush=True)

    tracks, source = _load_tracks("a" in args.parts, log)
    cmd = ".venv/bin/python bench/fidelity_myna.py" + (" --quick" if args.quick else "")
    if args.parts != "ab":
        cmd += f" --parts {args.parts}"
    if args.seeds:
        cmd += " --seeds " + " ".join(map(str, args.seeds))
    for flag, value in (("--cpu-seconds", args.cpu_seconds), ("--budget-mib", args.budget_mib)):
        if value:
            cmd += f" {flag} {value:g}"
    for part, name in (("a", "myna-speed"), ("b", "myna-fidelity")):
        if part not in args.parts:
            continue
        t0 = time.perf_counter()
        if part == "a":
            from xrisk.data.audio import CropPairs

            pairs = CropPairs(tracks.mels, 96, segment_frames=125)  # 4 s items: enough distinct items per batch
            body = part_a(cfg, pairs, tracks.waves, f"crops of {source} cut into {len(pairs)} items of 4 s", log)
        else:
            body = part_b(cfg, tracks, log)
        minutes = (time.perf_counter() - t0) / 60
        text = f"{body}\n\nCommand: `{cmd}` (this part: {minutes:.1f} min wall). Machine: {facts}."
        print(text, flush=True)
        if not (args.no_write or args.quick):
            _write(name, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
