"""DFTLoss against loops written from the paper's formula (linear-space estimator, per-prompt weights),
the gamma = 1 gradient identity on a tiny causal LM, DFT2 without a reference, large |d|, the reference's
u_init start, duplicates, training-mode-only writes."""

from __future__ import annotations

import math

import pytest
import torch

from xrisk.losses import DFTLoss


def _linear_oracle(batches, num_prompts, tau, gamma, u_init=None):
    """The estimator in linear space and the surrogate per prompt, written from the formula:
    u_i <- (1 - gamma) u_i + gamma (1/m) sum_j exp(d_ij) (first visit: the new value, or u = exp(u_init)),
    L = mean_i [-lp_i + (1/m) sum_j exp(d_ij) / u_i * lpn_ij]."""
    u = {i: math.exp(u_init) for i in range(num_prompts)} if u_init is not None else {}
    out = []
    for pos, neg, index, ref in batches:
        news: dict[int, list[float]] = {}
        d = [[float(neg[i, j]) / tau - (float(ref[i, j]) if ref is not None else 0.0) for j in range(neg.shape[1])]
             for i in range(len(pos))]
        for i, k in enumerate(index.tolist()):
            news.setdefault(k, []).append(sum(math.exp(x) for x in d[i]) / len(d[i]))
        for k, vals in news.items():
            new = sum(vals) / len(vals)  # a prompt twice in a batch: the mean of its estimates
            u[k] = new if k not in u else (1 - gamma) * u[k] + gamma * new
        total = 0.0
        for i, k in enumerate(index.tolist()):
            total += -float(pos[i]) + sum(math.exp(d[i][j]) / u[k] * float(neg[i, j]) for j in range(neg.shape[1])) / neg.shape[1]
        out.append((total / len(pos), dict(u)))
    return out


def _batches(ref: bool = True, dup: bool = True):
    g = torch.Generator().manual_seed(3)
    idx = [[0, 1, 2, 3], [2, 4, 0, 5], [5, 5, 1, 6] if dup else [5, 7, 1, 6]]
    out = []
    for b in idx:
        neg = -6 * torch.rand(4, 3, generator=g, dtype=torch.float64)
        out.append((-4 * torch.rand(4, generator=g, dtype=torch.float64), neg, torch.tensor(b),
                    neg + 0.5 * torch.randn(4, 3, generator=g, dtype=torch.float64) if ref else None))
    return out


@pytest.mark.parametrize("variant,tau,gamma,u_init", [("dft", 1.0, 0.85, None), ("dft", 0.5, 0.3, None),
                                                      ("dft2", 0.3, 0.9, None), ("dft", 1.0, 0.85, 0.0),
                                                      ("dft2", 0.3, 0.6, 0.0)])
def test_module_equals_linear_space_oracle(variant, tau, gamma, u_init):
    batches = _batches(ref=variant == "dft")
    loss_fn = DFTLoss(8, variant, tau=tau, gamma=gamma, u_init=u_init)
    expected = _linear_oracle(batches, 8, tau, gamma, u_init)
    for (pos, neg, index, ref), (want_loss, want_u) in zip(batches, expected):
        got = loss_fn(pos, neg, index, ref_logp_neg=ref)
        assert float(got) == pytest.approx(want_loss, rel=1e-5, abs=1e-6)
        value, seen = loss_fn.log_u.tensors()
        for k, u in want_u.items():
            assert float(value[k].exp()) == pytest.approx(u, rel=1e-5)
        assert all(bool(seen[k]) for k in index.tolist())
    visited = {k for _, _, index, _ in batches for k in index.tolist()}
    assert all(float(loss_fn.log_u.value[k]) == (u_init or 0.0) for k in range(8) if k not in visited)


def test_gradient_weights_are_the_normalised_importance_terms():
    """d loss / d logp_neg_ij = w_ij / (B m) with w = exp(d - log u) (detached), d loss / d logp_pos_i = -1/B."""
    pos = (-3 * torch.rand(5, dtype=torch.float64)).requires_grad_(True)
    neg = (-5 * torch.rand(5, 2, dtype=torch.float64)).requires_grad_(True)
    ref = torch.randn(5, 2, dtype=torch.float64)
    loss_fn = DFTLoss(10, tau=0.7, gamma=1.0)
    loss_fn(pos, neg, torch.arange(5), ref_logp_neg=ref).backward()
    d = neg.detach() / 0.7 - ref
    w = torch.softmax(d, 1) * 2  # gamma = 1: u = mean_j exp(d_ij)
    torch.testing.assert_close(neg.grad, w / 10)
    torch.testing.assert_close(pos.grad, torch.full((5,), -1 / 5, dtype=torch.float64))


@pytest.mark.parametrize("variant,tau", [("dft", 1.0), ("dft", 0.4), ("dft2", 0.3)])
def test_gamma_one_gradient_is_tau_times_the_compositional_objective_on_a_tiny_lm(variant, tau):
    transformers = pytest.importorskip("transformers")
    from xrisk.llm import sequence_logprobs
    from xrisk.llm.encoding import left_pad, pad_completions

    torch.manual_seed(0)
    # GPT-2 computes in the parameters' dtype (Llama's RMSNorm rounds through float32): float64 end to end
    config = transformers.GPT2Config(vocab_size=24, n_positions=32, n_embd=16, n_layer=1, n_head=2, pad_token_id=0,
                                     bos_token_id=1, eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).double()
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11]]
    groups = [[[12, 13], [14], [15, 16, 17]], [[18, 19, 20], [21, 2], [22]], [[23], [12, 12], [3, 4, 5, 6]]]
    pi, pm = left_pad(prompts, 0)
    ci, cm = pad_completions(groups, 0)
    batch = {"prompt_input_ids": pi, "prompt_attention_mask": pm, "completion_input_ids": ci,
             "completion_attention_mask": cm}
    ref = torch.randn(3, 2, dtype=torch.float64) - 4 if variant == "dft" else None
    params = list(model.parameters())

    logp, _ = sequence_logprobs(model, batch, normalize=variant == "dft2")
    loss = DFTLoss(3, variant, tau=tau, gamma=1.0)(logp[:, 0], logp[:, 1:], torch.arange(3), ref_logp_neg=ref)
    surrogate = torch.autograd.grad(loss, params)

    logp, _ = sequence_logprobs(model, batch, normalize=variant == "dft2")
    s_pos, s_neg = logp[:, 0], logp[:, 1:]
    d = s_neg / tau - (ref if ref is not None else 0.0)
    objective = (-s_pos / tau + torch.log(torch.exp(d).mean(1))).mean()  # F on the batch, written out
    exact = torch.autograd.grad(objective, params)
    for a, b in zip(surrogate, exact):
        torch.testing.assert_close(a, tau * b, rtol=1e-9, atol=1e-12)
    assert sum(float(a.abs().sum()) for a in surrogate) > 0


def test_dft2_needs_no_reference_and_dft_needs_one():
    pos, neg = -torch.rand(3), -torch.rand(3, 2)
    assert torch.isfinite(DFTLoss(4, "dft2")(pos, neg, torch.arange(3)))
    with pytest.raises(ValueError, match="needs ref_logp_neg"):
        DFTLoss(4)(pos, neg, torch.arange(3))
    with pytest.raises(ValueError, match="takes no ref_logp_neg"):
        DFTLoss(4, "dft2")(pos, neg, torch.arange(3), ref_logp_neg=neg)
    with pytest.raises(ValueError, match="shape"):
        DFTLoss(4)(pos, neg, torch.arange(3), ref_logp_neg=neg[:, :1])
    assert DFTLoss(4, "dft2").tau == 0.3 and DFTLoss(4, "dft2").gamma == 0.9  # the paper's DFT2
    assert DFTLoss(4).tau == 1.0 and DFTLoss(4).gamma == 0.85  # the paper's DFT


@pytest.mark.parametrize("scale", [1e3, 1e5])
def test_large_d_stays_finite(scale):
    pos = torch.tensor([-scale, -1.0, -scale / 2], requires_grad=True)
    neg = torch.tensor([[-scale, -1.0], [-2 * scale, -0.5], [-1.0, -scale]], requires_grad=True)
    ref = torch.tensor([[scale, -scale], [0.0, scale], [-scale, 0.0]])
    loss_fn = DFTLoss(3, tau=0.05, gamma=0.1)
    for _ in range(3):
        out = loss_fn(pos, neg, torch.arange(3), ref_logp_neg=ref)
        out.backward()
        assert torch.isfinite(out) and torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
        assert torch.isfinite(loss_fn.log_u.value).all() and torch.isfinite(loss_fn.objective())
        # the weights exp(d - log u) stay below m / gamma: the gradient of each negative is bounded
        assert float(neg.grad.abs().max()) <= 2 / 0.1 / 3 / 2 + 1e-6


def test_eval_mode_computes_the_same_value_and_writes_nothing():
    pos, neg, ref = -torch.rand(4), -torch.rand(4, 2), -torch.rand(4, 2)
    a, b = DFTLoss(6), DFTLoss(6)
    a(pos, neg, torch.arange(4), ref_logp_neg=ref)
    b.load_state_dict(a.state_dict())
    before = {k: v.clone() for k, v in b.state_dict().items()}
    pos2, neg2 = -torch.rand(4), -torch.rand(4, 2)
    b.eval()
    with torch.no_grad():
        value_eval = b(pos2, neg2, torch.tensor([0, 1, 4, 5]), ref_logp_neg=ref)
    assert all(torch.equal(before[k], v) for k, v in b.state_dict().items())
    value_train = a(pos2, neg2, torch.tensor([0, 1, 4, 5]), ref_logp_neg=ref)
    assert torch.equal(value_eval, value_train.detach())
    assert torch.equal(a.objective(), b.objective())
    assert not torch.equal(a.log_u.value, b.log_u.value)


def test_failed_write_leaves_state_untouched(monkeypatch):
    import xrisk.losses.dft as mod

    loss_fn = DFTLoss(6)
    loss_fn(-torch.rand(4), -torch.rand(4, 2), torch.arange(4), ref_logp_neg=-torch.rand(4, 2))
    before = {k: v.clone() for k, v in loss_fn.state_dict().items()}
    monkeypatch.setattr(mod, "dft_log_estimate", lambda *a: torch.full((4,), float("nan")))
    with pytest.raises(FloatingPointError):
        loss_fn(-torch.rand(4), -torch.rand(4, 2), torch.arange(2, 6), ref_logp_neg=-torch.rand(4, 2))
    assert all(torch.equal(before[k], v) for k, v in loss_fn.state_dict().items())


def test_first_visit_rule_versus_reference_start():
    """xrisk's default: the first estimate of a prompt is its batch estimate; u_init=0: the reference's
    moving average from u = 1 (the documented difference)."""
    neg, ref = torch.tensor([[-2.0, -3.0]]), torch.tensor([[-1.0, -1.0]])
    d = neg / 0.3 - ref
    new = torch.logsumexp(d, 1) - math.log(2)
    first = DFTLoss(2, tau=0.3, gamma=0.9)
    first(torch.tensor([-1.0]), neg, torch.tensor([1]), ref_logp_neg=ref)
    torch.testing.assert_close(first.log_u.value[1:], new)
    reference = DFTLoss(2, tau=0.3, gamma=0.9, u_init=0.0)
    reference(torch.tensor([-1.0]), neg, torch.tensor([1]), ref_logp_neg=ref)
    torch.testing.assert_close(reference.log_u.value[1:], torch.log(0.1 + 0.9 * new.exp()))


def test_checkpoint_of_another_data_set_is_refused_and_constructor_checks():
    with pytest.raises(ValueError, match="num_samples"):
        DFTLoss(5).load_state_dict(DFTLoss(6).state_dict())
    for kwargs in ({"tau": 0.0}, {"gamma": 0.0}, {"gamma": 1.5}, {"u_init": float("nan")}):
        with pytest.raises(ValueError):
            DFTLoss(5, **kwargs)
    with pytest.raises(ValueError, match="variant"):
        DFTLoss(5, "dpo")
    with pytest.raises(IndexError):
        DFTLoss(5)(-torch.rand(2), -torch.rand(2, 2), torch.tensor([0, 5]), ref_logp_neg=-torch.rand(2, 2))
