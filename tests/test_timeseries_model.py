"""TripletTransformer: Time2Vec, token shapes, padding invariance, length buckets, causal mask, imputation loss."""

import math

import pytest
import torch

from xrisk.functional.imputation import masked_mse
from xrisk.models import Time2Vec, TokenBatch, TripletTransformer, length_buckets


def _stay(n, num_variables=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g).sort().values * 48, torch.randint(1, num_variables + 1, (n,), generator=g),
            80 + 10 * torch.randn(n, generator=g))


def _model(**kw):
    torch.manual_seed(0)
    m = TripletTransformer(6, dim=16, heads=2, ff_dim=32, **kw)
    m.set_value_stats(torch.full((6,), 80.0), torch.full((6,), 10.0))
    return m.eval()


def test_time2vec_shape_and_formula():
    t2v = Time2Vec(8)
    t = torch.rand(3, 5)
    out = t2v(t)
    assert out.shape == (3, 5, 8)
    w, b = t2v.weight.detach(), t2v.bias.detach()
    assert torch.allclose(out[..., 0], w[0] * t + b[0])  # the linear component
    assert torch.allclose(out[..., 3], torch.sin(w[3] * t + b[3]))  # a periodic one
    with pytest.raises(ValueError, match="dim"):
        Time2Vec(1)


def test_token_batch_and_output_shapes():
    seqs = [_stay(7, seed=1), _stay(3, seed=2), _stay(5, seed=3)]
    batch = TokenBatch.pad(seqs)
    assert batch.times.shape == batch.variables.shape == batch.values.shape == (3, 7)
    assert batch.lengths.tolist() == [7, 3, 5]
    assert batch.padding_mask.sum(1).tolist() == [7, 3, 5]
    assert (batch.variables[1, 3:] == 0).all() and float(batch.times[1, 0]) == 0.0  # relative time
    out = _model()(batch)
    assert out.features.shape == out.embedding.shape == (3, 16)
    assert out.imputation.shape == (3, 7)
    assert (out.imputation[1, 3:] == 0).all()  # padding predicts nothing


@pytest.mark.parametrize("causal", [False, True])
def test_padding_never_changes_an_embedding(causal):
    model = _model(causal=causal, bucket_ratio=None)
    stay = _stay(9, seed=4)
    with torch.no_grad():
        alone = model(TokenBatch.pad([stay]))
        padded = model(TokenBatch.pad([stay, _stay(40, seed=5)]))  # padded to 40 tokens
        garbage = TokenBatch.pad([stay, _stay(40, seed=5)])
        garbage.values[0, 9:] = 1e6  # whatever sits in the padding is never looked at
        garbage.times[0, 9:] = -5.0
        noisy = model(garbage)
    for out in (padded, noisy):
        assert torch.allclose(out.features[0], alone.features[0], atol=1e-5, rtol=0)
        assert torch.allclose(out.embedding[0], alone.embedding[0], atol=1e-5, rtol=0)
        assert torch.allclose(out.imputation[0, :9], alone.imputation[0], atol=1e-5, rtol=0)


def test_length_buckets_give_the_same_outputs_and_gradients():
    seqs = [_stay(n, seed=n) for n in (3, 50, 4, 7, 45, 9, 60, 5, 12, 8, 30, 6)]
    mask = torch.zeros(12, 60, dtype=torch.bool)
    mask[:, ::4] = True
    batch = TokenBatch.pad(seqs)
    mask &= batch.padding_mask
    grads = []
    outs = []
    for ratio in (1.5, None):
        model = _model(bucket_ratio=ratio, min_bucket=2).train()
        out = model(batch, value_mask=mask)
        (out.embedding.square().sum() + out.imputation.square().sum()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
        outs.append(out)
    assert len(length_buckets(batch.lengths, ratio=1.5, min_size=2)) > 2  # the batch really was split
    assert torch.allclose(outs[0].features, outs[1].features, atol=1e-5, rtol=0)
    assert torch.allclose(outs[0].imputation, outs[1].imputation, atol=1e-5, rtol=0)
    assert torch.allclose(grads[0], grads[1], atol=1e-4, rtol=1e-4)


def test_length_buckets_cover_every_row_once():
    lengths = torch.tensor([5, 100, 6, 7, 90, 8, 3, 50, 51, 52])
    groups = length_buckets(lengths, ratio=1.5, min_size=2)
    assert sorted(torch.cat(groups).tolist()) == list(range(10))
    for g in groups:
        ls = lengths[g]
        assert g.numel() >= 2
        assert int(ls.max()) <= 1.5 * int(ls.min()) or g.numel() <= 3  # small groups may be merged
    with pytest.raises(ValueError):
        length_buckets(lengths, ratio=0.5)


def test_causal_mask_hides_later_tokens_from_earlier_ones():
    model = _model(causal=True, bucket_ratio=None)
    t, v, x = _stay(8, seed=6)
    with torch.no_grad():
        full = model(TokenBatch.pad([(t, v, x)])).imputation[0]
        x2 = x.clone()
        x2[5:] += 50.0  # change the last three values
        changed = model(TokenBatch.pad([(t, v, x2)])).imputation[0]
    assert torch.allclose(full[:5], changed[:5], atol=1e-6)
    assert not torch.allclose(full[5:], changed[5:])


def test_value_mask_hides_the_value():
    model = _model(bucket_ratio=None)
    t, v, x = _stay(6, seed=7)
    mask = torch.tensor([[False, False, True, False, False, False]])
    x2 = x.clone()
    x2[2] = -1000.0
    with torch.no_grad():
        a = model(TokenBatch.pad([(t, v, x)]), value_mask=mask)
        b = model(TokenBatch.pad([(t, v, x2)]), value_mask=mask)
    assert torch.equal(a.imputation, b.imputation) and torch.equal(a.features, b.features)


def test_normalisation_is_saved_with_the_model():
    model = _model()
    model.set_value_stats(torch.arange(1.0, 7.0), torch.full((6,), 2.0))
    state = model.state_dict()
    assert state["value_mean"][1:].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    fresh = TripletTransformer(6, dim=16, heads=2, ff_dim=32)
    fresh.load_state_dict(state)
    v, x = torch.tensor([1, 6]), torch.tensor([3.0, 10.0])
    assert fresh.normalize(v, x).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError, match="std"):
        model.set_value_stats(torch.zeros(6), torch.zeros(6))


def test_bad_inputs_raise():
    model = _model()
    batch = TokenBatch.pad([_stay(4)])
    batch.values[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        model(batch)
    batch = TokenBatch.pad([_stay(4)])
    batch.variables[0, 0] = 7
    with pytest.raises(ValueError, match="1..6"):
        model(batch)
    with pytest.raises(ValueError, match="divisible"):
        TripletTransformer(6, dim=10, heads=3)


def test_imputation_loss_only_counts_masked_values():
    pred = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]], requires_grad=True)
    target = torch.tensor([[0.0, 100.0, 1.0], [4.0, float("nan"), 7.0]])  # NaN outside the mask is fine
    mask = torch.tensor([[True, False, True], [True, False, False]])
    loss = masked_mse(pred, target, mask)
    assert float(loss.detach()) == pytest.approx((1.0 + 4.0 + 0.0) / 3)
    loss.backward()
    assert pred.grad[0, 1] == 0 and pred.grad[1, 1] == 0 and pred.grad[1, 2] == 0
    assert pred.grad[0, 0] == pytest.approx(2 * 1.0 / 3)
    empty = masked_mse(pred, target, torch.zeros_like(mask))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
    empty.backward()
    with pytest.raises(ValueError, match="NaN/inf"):
        masked_mse(pred, target, torch.ones_like(mask))
    with pytest.raises(ValueError, match="shape"):
        masked_mse(pred, target[:, :2], mask)


def test_imputation_loss_gradcheck():
    pred = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 4, dtype=torch.float64)
    mask = torch.rand(3, 4) < 0.5
    mask[0, 0] = True
    assert torch.autograd.gradcheck(lambda p: masked_mse(p, target, mask), (pred,))


def test_reference_sized_model_has_about_100k_parameters():
    n = sum(p.numel() for p in TripletTransformer(68).parameters())
    assert 60_000 < n < 150_000 and math.isfinite(n)
