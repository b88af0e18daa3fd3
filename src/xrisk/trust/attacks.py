"""Image perturbations: white-box PGD, BIM and C&W, black-box transfer images, Gaussian noise.

All attacks work on a ``3 x H x W`` float image ``x`` in ``[0, 1]`` (an adapter's ``preprocess``
output) and are pure functions of a differentiable objective.

**PGD / BIM** (L-infinity, untargeted; the reference's step, no random start by default):

.. math::

    x_{k+1} = x_0 + \\mathrm{clip}_{[-\\epsilon, \\epsilon]}\\big(\\mathrm{clip}_{[0,1]}(x_k + \\alpha\\,
    \\mathrm{sign}\\,\\nabla_x L(x_k)) - x_0\\big),

with ``L`` the cross-entropy of the candidate-answer logits (``A``-``D`` or ``Yes``/``No`` at the
answer position) against the true answer, ascended. Budgets of the reference (AutoTrust's
``whitebox_attack.py`` / ``AdvEvaluator.py``): PGD ``eps = 16/255, alpha = 2/255``, 10 steps;
BIM ``eps = 8/255, alpha = 0.8/255``, 10 steps; the black-box transfer images were made on a
surrogate with PGD ``eps = 16/255, alpha = 1/255``, 30 steps. The iterate never leaves the
``eps`` ball around ``x_0`` nor the box ``[0, 1]``.

**C&W** (L2): optimise ``w`` with ``x = (tanh(w) + 1) / 2`` by Adam (lr 1e-2, 100 steps) on

.. math::

    \\lVert x - x_0 \\rVert_2^2 + c \\, \\max(z_y - \\max_{j \\ne y} z_j, -\\kappa),

``z`` the candidate logits, ``y`` the true answer, ``kappa = 0``; the result is the successful
iterate (``z_y < max_j z_j``) closest to ``x_0``, or the last iterate if none succeeded.

**Gaussian noise**: ``N(0, variance)`` added to the 0-255 pixel values, then clipped to [0, 255]
and rounded. The reference added the noise and cast to ``uint8`` directly, so negative values
wrapped around to bright pixels; here they clip.

Example:
    >>> import torch
    >>> x = torch.full((3, 4, 4), 0.5)
    >>> adv = pgd(lambda z: z.sum(), x, eps=0.1, alpha=0.05, steps=3)
    >>> bool((adv - x).abs().max() <= 0.1 + 1e-6)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from xrisk.trust.adapters import ImageLike, to_tensor

__all__ = ["PGD_BUDGET", "BIM_BUDGET", "TRANSFER_BUDGET", "CW_SETTINGS", "AttackMethod", "pgd", "bim",
           "carlini_wagner", "candidates_for", "white_box_attack", "gaussian_noise"]

#: The reference's PGD budget (eps, alpha, steps).
PGD_BUDGET: dict[str, float] = {"eps": 16 / 255, "alpha": 2 / 255, "steps": 10}
#: The reference's BIM budget.
BIM_BUDGET: dict[str, float] = {"eps": 8 / 255, "alpha": 0.8 / 255, "steps": 10}
#: The budget of the reference's black-box transfer images (PGD on a surrogate).
TRANSFER_BUDGET: dict[str, float] = {"eps": 16 / 255, "alpha": 1 / 255, "steps": 30}
#: The reference's C&W settings.
CW_SETTINGS: dict[str, float] = {"c": 1.0, "kappa": 0.0, "steps": 100, "lr": 1e-2}

AttackMethod = Literal["pgd", "bim", "cw"]


def _check_image(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN/inf")
    if float(x.min()) < 0 or float(x.max()) > 1:
        raise ValueError("x must lie in [0, 1]")
    return x.detach()


def pgd(
    loss_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    eps: float = PGD_BUDGET["eps"],
    alpha: float = PGD_BUDGET["alpha"],
    steps: int = 10,
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """L-infinity projected gradient ascent of ``loss_fn`` from ``x`` (see the module notes).

    Args:
        loss_fn: image -> scalar loss to increase (differentiable).
        x: the clean image, float in [0, 1], any shape.
        eps: radius of the L-infinity ball (>= 0).
        alpha: step size (> 0).
        steps: number of steps (>= 0).
        random_start: start from a uniform point of the ball (the reference does not).
        generator: RNG for the random start.

    Returns:
        The perturbed image (detached), inside the ``eps`` ball and ``[0, 1]``.
    """
    if not (math.isfinite(eps) and eps >= 0) or not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"eps must be >= 0 and alpha > 0, got eps={eps!r}, alpha={alpha!r}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    x0 = _check_image(x)
    adv = x0.clone()
    if random_start and eps > 0:
        noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype) * 2 - 1
        adv = (x0 + eps * noise).clamp(0, 1)
    for _ in range(int(steps)):
        adv.requires_grad_(True)
        loss = loss_fn(adv)
        (grad,) = torch.autograd.grad(loss, adv)
        adv = (adv.detach() + alpha * grad.sign()).clamp(0, 1)
        adv = x0 + (adv - x0).clamp(-eps, eps)
    return adv.detach()


def bim(loss_fn: Callable[[Tensor], Tensor], x: Tensor, *, eps: float = BIM_BUDGET["eps"],
        alpha: float = BIM_BUDGET["alpha"], steps: int = 10) -> Tensor:
    """The basic iterative method: :func:`pgd` without random start, at the BIM budget."""
    return pgd(loss_fn, x, eps=eps, alpha=alpha, steps=steps, random_start=False)


def carlini_wagner(
    logits_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    target: int,
    *,
    c: float = CW_SETTINGS["c"],
    kappa: float = CW_SETTINGS["kappa"],
    steps: int = 100,
    lr: float = CW_SETTINGS["lr"],
) -> Tensor:
    """Untargeted L2 Carlini-Wagner attack in tanh space (see the module notes).

    Args:
        logits_fn: image -> candidate logits ``[K]`` (differentiable).
        x: the clean image in [0, 1].
        target: index of the true answer among the candidates.
        c: weight of the margin term (> 0).
        kappa: confidence margin (>= 0).
        steps: Adam steps.
        lr: Adam learning rate.
    """
    if not c > 0 or not kappa >= 0 or not lr > 0:
        raise ValueError(f"need c > 0, kappa >= 0, lr > 0; got c={c!r}, kappa={kappa!r}, lr={lr!r}")
    x0 = _check_image(x)
    w = torch.atanh((x0.clamp(1e-6, 1 - 1e-6) * 2 - 1)).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    best, best_dist = None, float("inf")
    adv = x0
    for _ in range(int(steps)):
        adv = 0.5 * (torch.tanh(w) + 1)
        z = logits_fn(adv).reshape(-1)
        others = torch.cat([z[:target], z[target + 1:]])
        margin = z[target] - others.max()
        dist = ((adv - x0) ** 2).sum()
        if float(margin.detach()) < 0 and float(dist.detach()) < best_dist:
            best, best_dist = adv.detach().clone(), float(dist.detach())
        loss = dist + c * margin.clamp(min=-kappa)
        opt.zero_grad()
        loss.backward()
        opt.step()
    final = best if best is not None else (0.5 * (torch.tanh(w) + 1)).detach()
    return final.clamp(0, 1)


def candidates_for(question_type: str) -> list[str]:
    """The answer candidates attacked: ``A``-``D`` for multiple choice, ``Yes``/``No`` for yes/no."""
    if question_type == "multi-choice":
        return ["A", "B", "C", "D"]
    if question_type == "yes-or-no":
        return ["Yes", "No"]
    raise ValueError(f"white-box attacks need a closed-ended question, got {question_type!r}")


def white_box_attack(
    adapter: Any,
    image: ImageLike,
    prompt: str,
    question_type: str,
    label: str,
    *,
    method: AttackMethod = "pgd",
    **budget: Any,
) -> Tensor:
    """Perturb ``image`` against ``adapter`` so that it misses ``label`` on ``prompt``.

    Args:
        adapter: a :class:`~xrisk.trust.adapters.WhiteBoxAdapter`.
        image: the clean image.
        prompt: the prompt the adapter answers.
        question_type: ``"multi-choice"`` or ``"yes-or-no"``.
        label: the true label (``"a"``-``"d"``, ``"yes"``, ``"no"``).
        method: ``"pgd"``, ``"bim"`` or ``"cw"``.
        **budget: overrides of the method's settings (``eps``, ``alpha``, ``steps``; ``c``, ...).

    Returns:
        The perturbed ``3 x H x W`` image in [0, 1] (the adapter's input space).
    """
    candidates = candidates_for(question_type)
    lowered = [c.lower() for c in candidates]
    if label not in lowered:
        raise ValueError(f"label {label!r} is not one of {lowered}")
    target = lowered.index(label)
    x = adapter.preprocess(image)

    def logits(img: Tensor) -> Tensor:
        return adapter.choice_logits(img, prompt, candidates).reshape(-1)

    def loss(img: Tensor) -> Tensor:
        return F.cross_entropy(logits(img)[None], torch.tensor([target]))

    if method == "pgd":
        settings = {**PGD_BUDGET, **budget}
        return pgd(loss, x, eps=settings["eps"], alpha=settings["alpha"], steps=int(settings["steps"]),
                   random_start=bool(settings.get("random_start", False)))
    if method == "bim":
        settings = {**BIM_BUDGET, **budget}
        return bim(loss, x, eps=settings["eps"], alpha=settings["alpha"], steps=int(settings["steps"]))
    if method == "cw":
        settings = {**CW_SETTINGS, **budget}
        return carlini_wagner(logits, x, target, c=settings["c"], kappa=settings["kappa"],
                              steps=int(settings["steps"]), lr=settings["lr"])
    raise ValueError(f"method must be 'pgd', 'bim' or 'cw', got {method!r}")


def gaussian_noise(image: ImageLike, *, variance: float = 6.0, seed: int = 0) -> np.ndarray:
    """``image`` plus Gaussian noise of ``variance`` on the 0-255 scale, clipped and rounded to uint8.

    Returns:
        An ``H x W x 3`` uint8 array.
    """
    if not (math.isfinite(variance) and variance >= 0):
        raise ValueError(f"variance must be finite and >= 0, got {variance!r}")
    x = to_tensor(image).permute(1, 2, 0).numpy().astype(np.float64) * 255.0
    rng = np.random.default_rng(seed)
    noisy = x + rng.normal(0.0, math.sqrt(variance), size=x.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)

