"""Gathering across processes, with an explicit gradient policy, and how to run xrisk under DDP.

Every helper here is a no-op (returns its input) when ``torch.distributed`` is not
initialised or the world has one process, so single-process code needs nothing special.
Tensors of different lengths on different ranks (uneven last batches) are supported:
they are padded for the collective and trimmed afterwards.

Gradient policies of :func:`all_gather`:

``grad="none"``
    Concatenation without autograd (state, labels, indices).
``grad="sum"``
    Autograd-aware gather. In backward, the gradients that *all* ranks computed for the
    gathered tensor are summed (an ``all_reduce``) and each rank keeps the rows of its own
    input. This is the policy that makes a global loss exact under DDP:

    *Why it is exact.* Let every rank compute the same global-batch loss ``L`` from the
    gathered tensor. Rank ``k``'s input rows ``x_k`` then receive
    ``sum_r dL/dx_k = K * dL/dx_k`` (``K`` = world size), so its parameter gradient is
    ``K * (dL/dx_k)(dx_k/dtheta)``. DDP averages parameter gradients over ranks:
    ``(1/K) sum_k K (dL/dx_k)(dx_k/dtheta) = dL/dtheta``, the single-process gradient on the
    concatenated batch. Parameters outside DDP that enter ``L`` directly (e.g. the AUC-M
    ``a, b, alpha``) get ``dL/dtheta`` on every rank without any reduction.

    The same policy is exact when rank ``k`` computes only the part ``L_k`` of a loss with
    ``sum_k L_k = K * L`` (local anchors against gathered negatives, scaled by ``K``):
    then the summed gradients are again ``K * dL/dx_k``.

**Agreeing on a batch before gathering it.** A collective needs every rank to take part with
tensors of one dtype and trailing shape: a rank whose features are wider, or float64 where the
others send float32, aborts the whole job inside gloo (SIGABRT), and a rank that raises on its own
bad input before the gather leaves the others waiting, or, if it catches the error and goes on,
pairs its next batch with their current one. So every gather site of the library (the score-loss
template, the contrastive template, :meth:`xrisk.SampleState.update` with ``local=True``, which the
false-negative detector uses) first validates its inputs locally and then calls
:func:`agree_on_batch`: one ``all_gather`` of a small fixed-size header per rank (the call site,
the outcome of the local checks, the batch size, the dtype and trailing shape of every tensor to
be gathered). It replaces the size exchange the gathers needed anyway (:class:`BatchLayout` holds
the sizes, passed on with ``sizes=``), so a valid step makes no extra round trip. When any rank's
checks failed, or the ranks disagree, **every** rank raises the same exception type with the same
message, naming the rank(s) and the fault (``"GlobalContrastiveLoss: bad batch on rank 1 of 2:
feats_a contains 1 NaN/inf value(s) ..."``); the state is untouched everywhere, so all ranks can
skip the batch together and stay in step. With validation off (:func:`xrisk.set_validation`) the sites call
:func:`agree_on_shapes` instead: the same header exchange, checked on the device with ``torch._assert_async``
(no host read), for which every rank's batch must have the same size.

**What no check can see: a rank that leaves out a call.** The agreement pairs the ranks' *next* xrisk
calls, so it catches a bad batch, never a missing call. A rank that raises (and catches) its own error
between the loss's forward and ``backward()`` skips the backward's gradient ``all_reduce`` of the gathered
tensor: its next forward's agreement then waits for a peer that waits in that ``all_reduce``, and both
wait until the process group's timeout (with gloo both then raise "Timed out waiting ..." and the group
is unusable). A rank that leaves out a whole step pairs its next batch with the others' current one
without any error, and the others' last call waits likewise. Detecting a skipped backward would take one
more collective in every backward (a header exchange like the forward's), and a skipped step cannot be
told from the batches at all, so xrisk does neither. What to do:

* make every rank-local decision to skip a collective one, before ``backward()``:
  ``if all_reduce_max(torch.tensor(float(bad))).item() > 0: continue`` (all ranks skip together; the
  forward's state update happened on every rank alike, so they stay identical);
* put your own checks before the loss call where you can: errors xrisk raises are raised on every rank;
* give ``init_process_group`` a timeout that fits a step (e.g. ``timeout=datetime.timedelta(minutes=5)``;
  gloo's default is 30 minutes), so a rank out of step ends the job with an error instead of hanging it
  for that long.

Running xrisk under DDP
-----------------------
* **Nothing to configure.** Call the loss with this rank's batch, ``loss(scores, targets, index)``
  or ``loss(feats_a, feats_b, index)``, where ``index`` holds dataset indices (use
  :class:`~xrisk.data.DistributedDualSampler` or any sampler that gives ranks disjoint shards).
  The loss may be a submodule of the DDP-wrapped model (the Lightning pattern) or live outside it.
* **What is gathered.** Score losses gather scores (``grad="sum"``), targets and indices: every rank
  computes the global-batch loss and the same state update. Contrastive losses gather features
  (``grad="sum"``) and indices; each rank keeps its own rows as anchors against all columns, and
  per-anchor statistics (``O(B)`` floats) are gathered so that every rank applies the same state
  update. Each loss's gradient equals one process's gradient on the concatenated batch (the proof
  above; 2-process gloo tests check it for every loss, with uneven local batches).
* **What is exact.** Gradients, state and objective estimates equal the single-process run on the
  concatenated batch, up to float summation order. ``gather=False`` (score losses) computes a
  per-rank loss instead: not the global objective, and the state then differs between ranks.
* **What DDP broadcasts.** Nothing of the loss. Its state, per-sample (:class:`~xrisk.SampleState`,
  ``O(num_samples)``) and scalar (epoch, counters, objective estimate), is identical on every rank
  after every step and is kept out of DDP's buffer broadcast automatically: the losses derive from
  :class:`~xrisk.state.ReplicatedStateModule`, whose buffers are not ``nn.Module`` buffers (not in
  ``named_buffers()``), yet are in ``state_dict()``, move with ``.to()`` and are never cast by
  ``.half()``. So the default ``broadcast_buffers=True`` costs nothing for them (``bench/ddp.py``);
  only the model's own buffers (e.g. BatchNorm's) are broadcast. The loss's parameters (AUC-M
  ``a, b, alpha``, a learned temperature) receive identical gradients on every rank, so DDP's
  averaging leaves them exact. Because DDP does not copy the loss's state from rank 0, **load a
  checkpoint on every rank** (as for the optimizer state).
* **Optimizers.** ``PESG(model.parameters(), loss=model.loss)`` accepts the loss's parameters in
  ``params`` and routes each to its rule (``alpha`` to the dual ascent).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "is_distributed",
    "world_size",
    "rank",
    "all_gather",
    "all_gather_with",
    "all_gather_many",
    "all_gather_no_grad",
    "all_reduce_sum",
    "all_reduce_max",
    "gather_sizes",
    "local_slice",
    "BatchLayout",
    "agree_on_batch",
    "agree_on_shapes",
]

T = TypeVar("T")


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def gather_sizes(n: int, device: torch.device | None = None) -> list[int]:
    """Leading sizes of every rank's tensor, in rank order."""
    if not is_distributed():
        return [n]
    t = torch.tensor([n], dtype=torch.long, device=device or _comm_device())
    out = [torch.zeros_like(t) for _ in range(world_size())]
    dist.all_gather(out, t)
    return [int(o.item()) for o in out]


def local_slice(n: int) -> tuple[int, int]:
    """``(start, stop)`` of this rank's ``n`` rows inside a gathered tensor."""
    sizes = gather_sizes(n)
    start = sum(sizes[: rank()])
    return start, start + n


def _comm_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------------------ agreeing on a batch
@dataclass(frozen=True)
class BatchLayout:
    """The leading size of every rank's batch, as :func:`agree_on_batch` found it.

    ``sizes[r]``: rows of rank ``r`` (rank order); ``rank``: this process. Pass ``sizes`` to
    :func:`all_gather` / :func:`all_gather_no_grad` to skip their size exchange.
    """

    sizes: tuple[int, ...]
    rank: int
    #: every rank's ``tag(validate())`` when :func:`agree_on_batch` was given a ``tag`` (rank order), else ``()``
    tags: tuple[int, ...] = ()

    @property
    def start(self) -> int:
        """Offset of this rank's rows inside a gathered tensor."""
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        """End (exclusive) of this rank's rows inside a gathered tensor."""
        return self.start + self.sizes[self.rank]

    @property
    def total(self) -> int:
        """Rows of the global batch."""
        return sum(self.sizes)


# Header of one rank: magic, site, status, batch size, report length, tensor count, tag (a rank's own number, not
# compared), then per tensor (dtype code, ndim, 3 trailing sizes). Fixed length, so any two xrisk handshakes can pair
# up.
_MAGIC = 0x78726B  # "xrk"
_MAX_TENSORS = 6
_TRAILING = 3
_SLOT = 2 + _TRAILING
_TAG = 6
_HEAD = 7
_HEADER_LEN = _HEAD + _MAX_TENSORS * _SLOT
_DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.bool, torch.uint8, torch.int8,
    torch.int16, torch.int32, torch.int64, torch.complex64, torch.complex128,
)
_DTYPE_CODE = {dt: i + 1 for i, dt in enumerate(_DTYPES)}  # 0: tensor absent (None)
# error types carried across ranks; anything else is re-raised everywhere as RuntimeError
_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, IndexError, FloatingPointError, RuntimeError)


def _error_code(exc: BaseException) -> int:
    for i, kind in enumerate(_ERRORS[:-1]):
        if isinstance(exc, kind):
            return i + 1
    return len(_ERRORS)


def _site_code(site: str) -> int:
    return zlib.crc32(site.encode())


def _describe(t: Tensor | None) -> list[int]:
    if t is None:
        return [0] * _SLOT
    shape = tuple(t.shape)
    trailing = list(shape[1 : 1 + _TRAILING])
    if len(shape) > 1 + _TRAILING:  # fold the rest into the last slot (same row size, same check)
        rest = 1
        for d in shape[_TRAILING:]:
            rest *= d
        trailing[-1] = rest
    return [_DTYPE_CODE.get(t.dtype, len(_DTYPES) + 1), len(shape), *trailing, *[0] * (_TRAILING - len(trailing))]


def _shape_text(code_row: Sequence[int]) -> str:
    ndim = code_row[1]
    dims = ["B", *[str(d) for d in code_row[2 : 2 + min(ndim - 1, _TRAILING)]]]
    return "[" + ", ".join(dims) + "]" if ndim else "[] (a scalar)"


def _dtype_text(code: int) -> str:
    return str(_DTYPES[code - 1]).replace("torch.", "") if 0 < code <= len(_DTYPES) else "another dtype"


def _gather_reports(reports: bytes, lengths: list[int]) -> list[str]:
    """Every rank's report text (error path only: one more collective)."""
    buf = torch.tensor(list(reports), dtype=torch.uint8)
    data = _gather_padded(buf, lengths).tolist()
    out, pos = [], 0
    for n in lengths:
        out.append(bytes(data[pos : pos + n]).decode("utf-8", "replace"))
        pos += n
    return out


def _collective_error(site: str, headers: list[list[int]], names: list[str],
                      reports: list[str]) -> tuple[type[Exception], str]:
    """The exception every rank raises: the same type and text on every rank (from gathered data only)."""
    k = len(headers)
    sites = [r.split("\0", 1)[0] for r in reports]
    failed = [r for r, h in enumerate(headers) if h[2]]
    if failed:
        kind = _ERRORS[headers[failed[0]][2] - 1]
        where = sites[failed[0]]
        parts = [f"rank {r} of {k}: {reports[r].split(chr(0), 1)[1]}" for r in failed]
        return kind, f"{where}: bad batch on " + "; on ".join(parts) + " (every rank raises this error)"
    if len(set(h[1] for h in headers)) > 1:
        calls = ", ".join(f"rank {r} in {s}" for r, s in enumerate(sites))
        return RuntimeError, (f"ranks are out of step: {calls}; every rank must make the same xrisk calls in "
                              "the same order")
    for i, name in enumerate(names):
        slots = [h[_HEAD + i * _SLOT : _HEAD + (i + 1) * _SLOT] for h in headers]
        if len(set(s[0] for s in slots)) > 1:
            if any(s[0] == 0 for s in slots):
                got = ", ".join(f"rank {r} {'sends none' if s[0] == 0 else 'sends one'}" for r, s in enumerate(slots))
                return ValueError, f"{site}: ranks disagree on whether {name} is given: {got}"
            got = ", ".join(f"rank {r} sends {_dtype_text(s[0])}" for r, s in enumerate(slots))
            return TypeError, (f"{site}: ranks disagree on the dtype of {name}: {got}; every rank must send the "
                               "same dtype (the ranks' tensors are gathered into one)")
        if len(set(tuple(s[1:]) for s in slots)) > 1:
            got = ", ".join(f"rank {r} sends {_shape_text(s)}" for r, s in enumerate(slots))
            return ValueError, (f"{site}: ranks disagree on the shape of {name}: {got}; only the batch size B may "
                                "differ between ranks")
    sizes = [h[3] for h in headers]
    return RuntimeError, f"{site}: ranks disagree on the batch layout (sizes {sizes})"


def agree_on_batch(
    site: str, validate: Callable[[], T], describe: Callable[[T], Mapping[str, Tensor | None]], *,
    tag: Callable[[T], int] | None = None,
) -> tuple[T, BatchLayout]:
    """Validate this rank's batch, then agree with every rank before anything is gathered.

    Runs ``validate()`` (this rank's checks; returns whatever the caller needs), then one
    ``all_gather`` of a fixed-size header: ``site`` (the call site, e.g. the loss's class name),
    whether ``validate`` raised, the batch size and, for every tensor of ``describe(result)`` (the
    tensors about to be gathered, at most 6; ``None`` for an absent one), its dtype and trailing
    shape. The batch size is the leading size of the first tensor.

    Raises on **every** rank, with the same type and message, when any rank's ``validate`` raised
    (the type of the lowest such rank: ``ValueError``, ``TypeError``, ``IndexError``,
    ``FloatingPointError``, else ``RuntimeError``; the message names each failing rank and its
    error; on the failing rank the original exception is chained), when the ranks are at different
    call sites (``RuntimeError``, "out of step"), or when a tensor's dtype (``TypeError``) or trailing
    shape (``ValueError``) differs between ranks. Nothing has been gathered then, so the caller's
    state is untouched on every rank.

    ``tag``: a number of this rank's (a non-negative int from the validated batch, e.g. how many state rows it
    will send) that travels in the same header: ``layout.tags`` holds every rank's, so a gather that follows can
    size rank-dependent parts without a collective of its own. Called only when ``validate`` succeeded.

    Not distributed: ``validate()`` runs (and raises) as usual and the layout has one rank.

    Returns:
        ``(validate(), layout)``; ``layout.sizes`` are every rank's batch sizes (``layout.tags`` their tags).
    """
    if not is_distributed():
        out = validate()
        tags = () if tag is None else (int(tag(out)),)
        return out, BatchLayout((_batch_size(list(describe(out).values())),), 0, tags)
    out, error, names, report, header = _local_header(site, validate, describe, "agree_on_batch", tag)
    headers = _exchange_headers(header)[1].tolist()
    ok = all(r[2] == 0 for r in headers) and all(
        r[1:2] + r[5:_TAG] + r[_HEAD:] == headers[0][1:2] + headers[0][5:_TAG] + headers[0][_HEAD:] for r in headers)
    if ok:
        tags = () if tag is None else tuple(r[_TAG] for r in headers)
        return out, BatchLayout(tuple(r[3] for r in headers), rank(), tags)  # type: ignore[return-value]
    reports = _gather_reports(report, [r[4] for r in headers])
    kind, message = _collective_error(site, headers, names, reports)
    raise kind(message) from error


def agree_on_shapes(
    site: str, validate: Callable[[], T], describe: Callable[[T], Mapping[str, Tensor | None]]
) -> tuple[T, BatchLayout]:
    """:func:`agree_on_batch` with validation off: no value is read on the host, so every rank's batch size must be
    **equal** (the gathers size their buffers from this rank's shape: ``layout.sizes = (B,) * K``).

    Runs ``validate()`` (this rank's checks of shapes and dtypes, which read no value), then one ``all_gather`` of
    :func:`agree_on_batch`'s fixed-size header (the call site, the outcome of ``validate``, the batch size, the
    dtype and trailing shape of every tensor of ``describe(result)``), then ``torch._assert_async`` that every rank
    sent the same header. A rank whose ``validate`` raised re-raises its error after the exchange; every other
    rank's assert fails. On CPU the assert raises ``RuntimeError`` at once, before anything else is gathered (so a
    rank with another batch size, dtype, trailing shape or call site, or a failed check, stops every rank); on an
    accelerator the device raises it later (the following gathers then meet buffers of other sizes: undefined,
    like any collective of mismatched tensors). The message cannot name the rank (that would be a host read): turn
    validation on (:func:`xrisk.set_validation`) to see it, and to train on uneven batches.

    Not distributed: ``validate()`` and the layout of this rank's batch, no collective.
    """
    if not is_distributed():
        out = validate()
        return out, BatchLayout((_batch_size(list(describe(out).values())),), 0)
    out, error, _, _, header = _local_header(site, validate, describe, "agree_on_shapes")
    h, gathered = _exchange_headers(header)
    if error is not None:
        raise error
    n = header[3]  # this rank's batch size, from the host-side header (no device read)
    torch._assert_async((gathered == h).all(), (
        f"{site}: with validation off every rank must send a batch of the same size, dtype and trailing shape "
        f"(this rank: {n} samples) at the same call, and pass its checks: some rank differs or failed; "
        "turn validation on (xrisk.set_validation(True)) to see which, or to train on uneven batches"))
    return out, BatchLayout((n,) * world_size(), rank())  # type: ignore[return-value]


def _batch_size(tensors: Sequence[Tensor | None]) -> int:
    """The batch size of a described batch: the leading size of its first tensor (0 when that one is absent)."""
    return 0 if tensors[0] is None else int(tensors[0].shape[0])


def _local_header(site: str, validate: Callable[[], T], describe: Callable[[T], Mapping[str, Tensor | None]],
                  caller: str, tag: Callable[[T], int] | None = None
                  ) -> tuple[T | None, Exception | None, list[str], bytes, list[int]]:
    """This rank's side of :func:`agree_on_batch` / :func:`agree_on_shapes`: runs ``validate()`` and ``describe``
    (an exception is caught and returned, to be raised after the exchange the other ranks wait in) and builds
    the fixed-size header ``[magic, site, error code, batch size, report length, tensor count, (dtype, ndim,
    trailing shape) per tensor, 0...]``. Returns ``(validate(), error, tensor names, report, header)``;
    ``report``: the site name, a NUL byte and the error text (read by the other ranks only when the agreement
    fails)."""
    error: Exception | None = None
    out = None
    names: list[str] = []
    tensors: list[Tensor | None] = []
    tagged = 0
    try:
        out = validate()
        described = describe(out)
        names, tensors = list(described), list(described.values())
        if len(tensors) > _MAX_TENSORS:
            raise RuntimeError(f"{caller} describes at most {_MAX_TENSORS} tensors, got {len(tensors)}")
        tagged = 0 if tag is None else int(tag(out))
    except Exception as exc:  # noqa: BLE001 - returned, raised after the exchange
        error = exc
    report = f"{site}\0{'' if error is None else (str(error) or type(error).__name__)}".encode()
    header = [_MAGIC, _site_code(site), 0 if error is None else _error_code(error),
              0 if error is not None else _batch_size(tensors), len(report), len(tensors), tagged]
    for t in tensors:
        header += _describe(t)
    header += [0] * (_HEADER_LEN - len(header))
    return out, error, names, report, header


def _exchange_headers(header: list[int]) -> tuple[Tensor, Tensor]:
    """This rank's header as a tensor on the communication device and every rank's, ``[K, _HEADER_LEN]``
    (one ``all_gather``)."""
    h = torch.tensor(header, dtype=torch.long, device=_comm_device())
    gathered = torch.empty(world_size(), h.numel(), dtype=h.dtype, device=h.device)
    dist.all_gather(list(gathered.unbind(0)), h)
    return h, gathered


# ------------------------------------------------------------------------------ gathers
def _gather_padded(x: Tensor, sizes: Sequence[int]) -> Tensor:
    """Concatenate ``x`` of every rank along dim 0 (sizes may differ)."""
    orig_device = x.device
    dev = _comm_device()
    xb = x.to(dev)
    if xb.dtype == torch.bool:
        xb = xb.to(torch.uint8)
    m = max(sizes)
    if xb.shape[0] < m:
        pad = torch.zeros((m - xb.shape[0], *xb.shape[1:]), dtype=xb.dtype, device=dev)
        xb = torch.cat([xb, pad], 0)
    bufs = [torch.empty_like(xb) for _ in sizes]
    dist.all_gather(bufs, xb.contiguous())
    out = torch.cat([b[:s] for b, s in zip(bufs, sizes)], 0)
    if x.dtype == torch.bool:
        out = out.to(torch.bool)
    return out.to(orig_device)


def all_gather_no_grad(x: Tensor, *, sizes: Sequence[int] | None = None) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, without autograd.

    ``sizes``: every rank's leading size if known (e.g. :attr:`BatchLayout.sizes`), which saves
    the size exchange; otherwise gathered first.
    """
    if not is_distributed():
        return x
    with torch.no_grad():
        return _gather_padded(x.detach(), gather_sizes(x.shape[0]) if sizes is None else sizes)


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (no autograd); returns ``x`` when not distributed."""
    return _all_reduce(x, dist.ReduceOp.SUM) if is_distributed() else x


def all_reduce_max(x: Tensor) -> Tensor:
    """Element-wise maximum of ``x`` over ranks (no autograd); returns ``x`` when not distributed."""
    return _all_reduce(x, dist.ReduceOp.MAX) if is_distributed() else x


def _all_reduce(x: Tensor, op: "dist.ReduceOp") -> Tensor:
    y = x.detach().clone().to(_comm_device())
    dist.all_reduce(y, op=op)
    return y.to(x.device)


class _GatherSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, sizes: Sequence[int] | None) -> Tensor:  # type: ignore[override]
        sizes = gather_sizes(x.shape[0]) if sizes is None else list(sizes)
        ctx.sizes = sizes
        ctx.rank = rank()
        return _gather_padded(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        g = grad.contiguous().to(_comm_device())
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return g[start : start + ctx.sizes[ctx.rank]].to(grad.device), None


def _as_bytes(t: Tensor, device: torch.device) -> Tensor:
    """The bytes of ``t`` (flattened, contiguous) as a ``uint8`` tensor on ``device``."""
    b = t.contiguous().view(-1).view(torch.uint8)
    return b if b.device == device else b.to(device)


def _gather_packed(tensors: Sequence[Tensor], sizes: Sequence[Sequence[int]]) -> list[Tensor]:
    """``[_gather_padded(t, sizes[k]) for k, t in enumerate(tensors)]`` in **one** collective: every rank sends the
    bytes of its tensors one after the other in one ``uint8`` buffer, padded (with whatever memory holds: nothing
    reads the padding) to the longest rank's; one ``split`` cuts the gathered buffers into every rank's part of every
    tensor, one ``cat`` per tensor joins them, viewed in its dtype. Exact for every dtype (the bytes travel). Called
    without autograd (inside a ``no_grad`` block or an autograd function's ``forward``)."""
    dev, me, world = _comm_device(), rank(), world_size()
    widths = [math.prod(t.shape[1:]) * t.element_size() for t in tensors]  # bytes per row (a rank may send none)
    segments = [[n[r] * w for n, w in zip(sizes, widths)] for r in range(world)]
    longest = max(sum(seg) for seg in segments)
    parts = [_as_bytes(t, dev) for t in tensors]
    pad = longest - sum(segments[me])
    if pad:
        parts.append(torch.empty(pad, dtype=torch.uint8, device=dev))
    out = torch.empty(world, longest, dtype=torch.uint8, device=dev)
    dist.all_gather(list(out.unbind(0)), torch.cat(parts) if len(parts) > 1 else parts[0])
    cuts = []
    for seg in segments:
        cuts += seg
        cuts.append(longest - sum(seg))
    pieces = out.view(-1).split_with_sizes(cuts)  # rank-major: every rank's part of tensor 0, 1, ..., its padding
    stride = len(tensors) + 1
    result = []
    for k, (t, n) in enumerate(zip(tensors, sizes)):
        rows = torch.cat(pieces[k::stride]).view(t.dtype).view(sum(n), *t.shape[1:])
        result.append(rows if rows.device == t.device else rows.to(t.device))
    return result


class _GatherSumWith(torch.autograd.Function):
    """:class:`_GatherSum` of ``x`` with gradient-free ``extras`` gathered in the same collective."""

    @staticmethod
    def forward(ctx, x: Tensor, layout: Sequence[Sequence[int]], *extras: Tensor):  # type: ignore[override]
        ctx.sizes = list(layout[0])
        ctx.rank = rank()
        xs, *es = _gather_packed([x, *extras], layout)
        ctx.mark_non_differentiable(*es)
        return (xs, *es)

    @staticmethod
    def backward(ctx, grad: Tensor, *_grad_extras: Tensor | None):  # type: ignore[override]
        return (_GatherSum.backward(ctx, grad)[0], None, *[None] * len(_grad_extras))


def all_gather_with(
    x: Tensor, extras: Sequence[Tensor], *, grad: Literal["sum", "none"], sizes: Sequence[int],
    extra_sizes: Sequence[int], more: Sequence[Tensor] = (), more_sizes: Sequence[int] = (),
) -> tuple[Tensor, list[Tensor]]:
    """``(all_gather(x, grad=grad, sizes=sizes), [all_gather_no_grad(e, sizes=extra_sizes) for e in extras])`` with
    **one** collective (a step that needs both pays one round trip; e.g. the global batch's scores and the sharded
    state rows it reads, :func:`xrisk.sharding.gather_and_open`). Any dtypes (the bytes travel: exact).
    ``more``: further gradient-free tensors of other leading sizes (``more_sizes`` rows per rank), gathered in the same
    collective and returned after the ``extras``."""
    if grad not in ("sum", "none"):
        raise ValueError(f"grad policy must be 'sum' or 'none', got {grad!r}")
    if not is_distributed():
        return x, [*extras, *more]
    layout = [list(sizes), *[list(extra_sizes)] * len(extras), *[list(more_sizes)] * len(more)]
    if grad == "none" or not x.requires_grad:
        with torch.no_grad():
            xs, *es = _gather_packed([x, *extras, *more], layout)
        return xs, es
    xs, *es = _GatherSumWith.apply(x, layout, *[e.detach() if e.requires_grad else e for e in (*extras, *more)])
    return xs, es


def all_gather_many(tensors: Sequence[Tensor], *, sizes: Sequence[int], more: Sequence[Tensor] = (),
                    more_sizes: Sequence[int] = ()) -> list[Tensor]:
    """``[all_gather_no_grad(t, sizes=sizes) for t in tensors]`` with one collective (any dtypes, exact); ``more``:
    further tensors of other per-rank leading sizes (``more_sizes``), gathered in the same collective and returned
    after the others."""
    if not is_distributed():
        return [*tensors, *more]
    with torch.no_grad():
        return _gather_packed([*tensors, *more], [list(sizes)] * len(tensors) + [list(more_sizes)] * len(more))


def all_gather(x: Tensor, *, grad: Literal["sum", "none"], sizes: Sequence[int] | None = None) -> Tensor:
    """Concatenate ``x`` (``[B_k, ...]`` on rank ``k``) from all ranks along dim 0.

    Args:
        x: this rank's tensor; leading sizes may differ between ranks, dtype and trailing shape
            must not (check them with :func:`agree_on_batch` first).
        grad: gradient policy, ``"sum"`` or ``"none"`` (see the module docstring).
        sizes: every rank's leading size if known (:attr:`BatchLayout.sizes`); saves the size exchange.

    Returns:
        ``[sum_k B_k, ...]`` in rank order; ``x`` itself when not distributed.
    """
    if grad not in ("sum", "none"):
        raise ValueError(f"grad policy must be 'sum' or 'none', got {grad!r}")
    if not is_distributed():
        return x
    if grad == "none" or not x.requires_grad:
        return all_gather_no_grad(x, sizes=sizes)
    return _GatherSum.apply(x, sizes)
