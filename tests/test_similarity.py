"""The fused cosine-similarity nodes equal F.normalize + matmul in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xrisk.functional.similarity import (
    cosine_gram, cosine_similarity_detached, cosine_similarity_matrix, cosine_weighted_sum,
)


def _inputs(dtype, zero_row=False):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=g, dtype=dtype)
    b = torch.randn(4, 3, generator=g, dtype=dtype)
    if zero_row:  # F.normalize leaves a zero row at zero and scales (does not project) its gradient
        a[1] = 0.0
        b[2] = 1e-14
    return a.requires_grad_(True), b.requires_grad_(True)


def _reference(a, b, gram):
    if gram:
        z = F.normalize(torch.cat([a, b]), dim=1)
        return z @ z.T
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


@pytest.mark.parametrize("gram", (False, True))
@pytest.mark.parametrize("zero_row", (False, True))
def test_value_and_gradient_equal_the_autograd_composition(gram, zero_row):
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a, b = _inputs(dtype, zero_row)
        fused = cosine_gram(a, b) if gram else cosine_similarity_matrix(a, b)
        ref = _reference(a, b, gram)
        torch.testing.assert_close(fused, ref, rtol=tol, atol=tol)
        up = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
        want = torch.autograd.grad((ref * up).sum(), [a, b])
        got = torch.autograd.grad((fused * up).sum(), [a, b])
        for w, g in zip(want, got):
            torch.testing.assert_close(g, w, rtol=tol, atol=tol)


@pytest.mark.parametrize("gram", (False, True))
def test_float64_gradcheck_and_one_input_without_grad(gram):
    a, b = _inputs(torch.float64)
    fn = cosine_gram if gram else cosine_similarity_matrix
    if gram:
        b = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (a, b))
    (ga,) = torch.autograd.grad(fn(a, b.detach()).sum(), [a])
    (wa,) = torch.autograd.grad(_reference(a, b.detach(), gram).sum(), [a])
    torch.testing.assert_close(ga, wa)


def test_second_backward_raises():
    a, b = _inputs(torch.float64)
    (ga,) = torch.autograd.grad(cosine_similarity_matrix(a, b).sum(), [a], create_graph=True)
    with pytest.raises(RuntimeError):
        ga.sum().backward()


def test_weighted_sum_second_backward_raises():
    """The weighted-sum node is differentiable once too (its backward skips once_differentiable's wrapper only
    when no graph is being built)."""
    a, b = _inputs(torch.float64)
    s, f = cosine_similarity_detached(a, b)
    w = torch.randn(s.shape, dtype=s.dtype, generator=torch.Generator().manual_seed(4))
    p = torch.tensor(2.0, dtype=s.dtype, requires_grad=True)  # an upstream gradient with a graph of its own
    (ga,) = torch.autograd.grad(cosine_weighted_sum(f, w, (w * s).sum()) * p, [a], create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        ga.sum().backward()


def test_weighted_sum_node_equals_the_dot_with_the_similarity_matrix():
    """cosine_weighted_sum(cosine_similarity_detached(a, b), W, value) has the value given and the gradient of
    sum(W * cosine_similarity_matrix(a, b)), also for an upstream gradient other than 1 and one input without grad."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        a, b = _inputs(dtype, zero_row=True)
        w = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=dtype)
        s, f = cosine_similarity_detached(a, b)
        torch.testing.assert_close(s, cosine_similarity_matrix(a, b).detach(), rtol=tol, atol=tol)
        value = (w * s).sum()
        out = cosine_weighted_sum(f, w, value)
        assert torch.equal(out.detach(), value) and out.requires_grad
        got = torch.autograd.grad(out * 2.5, [a, b])
        want = torch.autograd.grad((w * cosine_similarity_matrix(a, b)).sum() * 2.5, [a, b])
        for g, x in zip(got, want):
            torch.testing.assert_close(g, x, rtol=tol, atol=tol)
        s, f = cosine_similarity_detached(a, b.detach())
        (ga,) = torch.autograd.grad(cosine_weighted_sum(f, w, (w * s).sum()), [a])
        (wa,) = torch.autograd.grad((w * cosine_similarity_matrix(a, b.detach())).sum(), [a])
        torch.testing.assert_close(ga, wa, rtol=tol, atol=tol)


def test_weighted_sum_node_gradcheck():
    a, b = _inputs(torch.float64)
    w = torch.randn(5, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def fn(a, b):
        s, f = cosine_similarity_detached(a, b)
        return cosine_weighted_sum(f, w, (w * s).sum())

    assert torch.autograd.gradcheck(fn, (a, b))
