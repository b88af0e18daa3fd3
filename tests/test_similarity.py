"""The fused cosine-similarity nodes equal F.normalize + matmul in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from xrisk.functional.similarity import cosine_gram, cosine_similarity_matrix


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
