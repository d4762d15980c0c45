"""Device sampling (temperature / top-k / top-p / min-p, no host sync) vs its reference."""

from __future__ import annotations

import pytest
import torch

from sglserve.layers.sampler import filter_probs, sample, sample_ref, sampling_probs, sampling_probs_ref

HAS_CUDA = torch.cuda.is_available()


def params(device, temps, top_ps, top_ks, min_ps, greedy):
    f = dict(dtype=torch.float32, device=device)
    return (torch.tensor(temps, **f), torch.tensor(top_ps, **f), torch.tensor(top_ks, dtype=torch.int64, device=device),
            torch.tensor(min_ps, **f), torch.tensor(greedy, dtype=torch.bool, device=device))


ROWS = dict(  # one row per filter and their combinations
    temps=[1.0, 0.7, 1.3, 0.5, 1.0, 2.0],
    top_ps=[1.0, 0.9, 1.0, 0.5, 0.95, 0.3],
    top_ks=[-1, 50, 5, 0, 1000, 3],
    min_ps=[0.0, 0.0, 0.0, 0.0, 0.05, 0.1],
    greedy=[False] * 6,
)


def test_filtered_distribution_matches_reference(device, gen):
    logits = (torch.randn(6, 500, generator=gen) * 3).to(device)
    t, p, k, m, _ = params(device, **ROWS)
    probs = sampling_probs(logits, t, p, k, m)
    probs = probs / probs.sum(-1, keepdim=True)
    torch.testing.assert_close(probs, sampling_probs_ref(logits, t, p, k, m), atol=1e-5, rtol=1e-4)
    support = (probs > 0).sum(-1).tolist()
    assert support[0] == 500 and support[1] <= 50 and support[2] == 5 and support[3] >= 1


def test_top1_always_kept(device):
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25]], device=device)
    out = filter_probs(probs, torch.tensor([0.0, 0.0], device=device), torch.tensor([1, 1], device=device),
                       torch.tensor([1.0, 1.0], device=device))
    assert torch.equal(out > 0, torch.tensor([[True, False, False], [True, False, False]], device=device))


def test_greedy_rows_are_argmax_whatever_the_temperature(device, gen):
    logits = torch.randn(4, 1000, generator=gen).to(device)
    t, p, k, m, g = params(device, [0.0, 5.0, 1.0, 1e-9], [1.0] * 4, [-1] * 4, [0.0] * 4, [True] * 4)
    ids = sample(logits, t, p, k, m, g)
    assert torch.equal(ids, logits.argmax(-1))


def test_samples_stay_in_support_and_follow_distribution(device):
    g = torch.Generator(device=device).manual_seed(0)
    vocab, draws = 8, 4000
    base = torch.log(torch.tensor([0.3, 0.25, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01]))
    logits = base.repeat(draws, 1).to(device)
    n = draws
    t, p, k, m, gr = params(device, [1.0] * n, [0.8] * n, [-1] * n, [0.0] * n, [False] * n)
    ids = sample(logits, t, p, k, m, gr, generator=g)
    counts = torch.bincount(ids.cpu(), minlength=vocab).float() / draws
    # top_p 0.8 keeps tokens while the mass before them is <= 0.8: {0.3, .25, .2, .1} (mass before .75)
    expected = torch.tensor([0.3, 0.25, 0.2, 0.1, 0, 0, 0, 0]) / 0.85
    assert counts[4:].sum() == 0
    assert torch.allclose(counts, expected, atol=0.03), counts


def test_mixed_greedy_and_sampled_rows_and_reproducible(device, gen):
    logits = (torch.randn(6, 300, generator=gen) * 2).to(device)
    t, p, k, m, _ = params(device, **ROWS)
    greedy = torch.tensor([True, False, True, False, False, True], device=device)
    a = sample(logits, t, p, k, m, greedy, generator=torch.Generator(device=device).manual_seed(7))
    b = sample(logits, t, p, k, m, greedy, generator=torch.Generator(device=device).manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.int64 and a.shape == (6,)
    assert torch.equal(a[greedy], logits.argmax(-1)[greedy])
    probs = sampling_probs_ref(logits, t, p, k, m)
    assert torch.all(probs[torch.arange(6, device=device), a] > 0)
    ref = sample_ref(logits, t, p, k, m, greedy, generator=torch.Generator(device=device).manual_seed(7))
    assert torch.equal(ref[greedy], a[greedy])


def test_need_filter_false_is_plain_softmax(device, gen):
    logits = torch.randn(3, 50, generator=gen).to(device)
    t, p, k, m, _ = params(device, [1.0, 0.5, 2.0], [1.0] * 3, [-1] * 3, [0.0] * 3, [False] * 3)
    torch.testing.assert_close(sampling_probs(logits, t, p, k, m, need_filter=False),
                               torch.softmax(logits / t[:, None], -1))


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_sample_has_no_host_sync(gen):
    logits = torch.randn(64, 32000, generator=gen).cuda()
    n = 64
    t, p, k, m, g = params("cuda", [0.8] * n, [0.9] * n, [40] * n, [0.05] * n, [i % 2 == 0 for i in range(n)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        sample(logits, t, p, k, m, g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
