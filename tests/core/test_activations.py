"""Activation statistics against brute force on small synthetic activations fed in several batches."""

import numpy as np
import pytest
import torch

from core.activations import HIST_EDGES, INTERVAL_EDGES, ActivationAccumulator, medical_llr
from core.config import ActivationsConfig

N_ROWS, T, D_SAE, D_VOCAB = 24, 12, 6, 20
CONFIG = ActivationsConfig(batch_size=5, top_contexts=4, window_before=3, window_after=2, samples_per_interval=2)


def synthetic():
    """Sparse activations [rows, T, d_sae] with distinct values; feature 5 never fires; tokens in [0, 20)."""
    generator = torch.Generator().manual_seed(1)
    acts = torch.rand(N_ROWS, T, D_SAE, generator=generator) * 10 ** torch.randint(-2, 2, (N_ROWS, T, D_SAE),
                                                                                   generator=generator)
    acts = acts * (torch.rand(N_ROWS, T, D_SAE, generator=generator) < 0.3)
    acts[..., 5] = 0
    tokens = torch.randint(0, D_VOCAB, (N_ROWS, T), generator=generator)
    rows = torch.cat([torch.full((N_ROWS, 1), 99), tokens], dim=1)  # BOS column (id 99) as the corpus has it
    return acts, tokens, rows


def accumulate(acts, tokens, rows, medical=None):
    medical = torch.zeros(D_VOCAB, dtype=torch.bool) if medical is None else medical
    acc = ActivationAccumulator(D_SAE, D_VOCAB, CONFIG, medical, seed=0)
    for start in range(0, N_ROWS, CONFIG.batch_size):
        stop = start + CONFIG.batch_size
        acc.update(acts[start:stop], tokens[start:stop], torch.arange(start, min(stop, N_ROWS)))
    return acc.result(rows)


def test_counts_moments_and_dead_feature_match_numpy():
    acts, tokens, rows = synthetic()
    summary = accumulate(acts, tokens, rows)
    a = acts.numpy().reshape(-1, D_SAE).astype(np.float64)
    fired = a > 0
    assert summary.n_tokens == N_ROWS * T
    np.testing.assert_array_equal(summary.n_fired, fired.sum(0))
    np.testing.assert_allclose(summary.max_act, a.max(0), rtol=1e-6)
    for f in range(5):
        nonzero = a[fired[:, f], f]
        assert summary.mean_act[f] == pytest.approx(nonzero.mean(), rel=1e-6)
        assert summary.var_act[f] == pytest.approx(nonzero.var(), rel=1e-5)
    assert summary.n_fired[5] == 0 and summary.max_act[5] == 0 and np.isnan(summary.mean_act[5])
    assert summary.frac_nonzero[5] == 0
    np.testing.assert_array_equal(summary.unigram, np.bincount(tokens.flatten().numpy(), minlength=D_VOCAB))


def test_histogram_matches_numpy_with_clamped_ends():
    acts, tokens, rows = synthetic()
    summary = accumulate(acts, tokens, rows)
    a = acts.numpy().reshape(-1, D_SAE)
    for f in range(D_SAE):
        values = np.clip(a[a[:, f] > 0, f], HIST_EDGES[0], HIST_EDGES[-1] * 0.999)
        expected, _ = np.histogram(values, bins=HIST_EDGES)
        np.testing.assert_array_equal(summary.hist_counts[f], expected)
    assert summary.hist_counts[5].sum() == 0


def test_running_top_contexts_equal_brute_force_sort_with_windows():
    acts, tokens, rows = synthetic()
    summary = accumulate(acts, tokens, rows)
    for f in range(D_SAE):
        row_max, argmax = acts[..., f].max(dim=1)
        order = [r for r in torch.argsort(row_max, descending=True).tolist() if row_max[r] > 0][:CONFIG.top_contexts]
        top = summary.top
        filled = top.row[f] >= 0
        assert top.row[f][filled].tolist() == order
        np.testing.assert_allclose(top.max_act[f][filled], row_max[order].numpy())
        for slot, r in enumerate(order):
            p = int(argmax[r])
            assert top.max_pos[f, slot] == p + 1  # row coordinates: BOS is position 0
            for w, offset in enumerate(range(-3, 3)):
                inside = 0 <= p + offset < T
                assert top.window_token_ids[f, slot, w] == (tokens[r, p + offset] if inside else -1)
                assert top.window_acts[f, slot, w] == pytest.approx(acts[r, p + offset, f] if inside else 0.0)
    assert (summary.top.row[5] == -1).all()


def test_interval_samples_lie_in_their_interval_and_fill_it():
    acts, tokens, rows = synthetic()
    summary = accumulate(acts, tokens, rows)
    samples = summary.intervals
    for f in range(D_SAE):
        row_max = acts[..., f].max(dim=1).values.numpy()
        interval_of = np.clip(np.searchsorted(INTERVAL_EDGES, row_max[row_max > 0], side="right") - 1,
                              0, len(INTERVAL_EDGES) - 2)
        for interval in range(len(INTERVAL_EDGES) - 1):
            slots = (summary.interval_index == interval) & (samples.row[f] >= 0)
            available = int((interval_of == interval).sum())
            assert slots.sum() == min(CONFIG.samples_per_interval, available)
            chosen = samples.row[f][slots]
            assert len(set(chosen.tolist())) == len(chosen)  # one sample per row
            np.testing.assert_allclose(samples.max_act[f][slots], row_max[chosen], rtol=1e-6)
            if interval > 0:
                assert (samples.max_act[f][slots] >= INTERVAL_EDGES[interval] * (1 - 1e-6)).all()


def test_medical_firings_and_llr_by_hand():
    """Feature 0 fires on tokens 3 and 4 only; token 3 is medical. Counts and the LLR are computed by hand."""
    acts = torch.zeros(N_ROWS, T, D_SAE)
    tokens = torch.arange(N_ROWS * T).reshape(N_ROWS, T) % D_VOCAB
    acts[..., 0] = ((tokens == 3) | (tokens == 4)).float()
    rows = torch.cat([torch.zeros(N_ROWS, 1, dtype=torch.long), tokens], dim=1)
    medical = torch.zeros(D_VOCAB, dtype=torch.bool)
    medical[[3, 7]] = True
    summary = accumulate(acts, tokens, rows, medical)
    n3 = int((tokens == 3).sum())
    n4 = int((tokens == 4).sum())
    n7 = int((tokens == 7).sum())
    assert summary.n_fired[0] == n3 + n4 and summary.med_fired[0] == n3
    assert summary.n_medical_tokens == n3 + n7
    p_medical = (n3 + n7) / (N_ROWS * T)
    expected = np.log(((n3 + 0.5) / (n3 + n4 + 1)) / p_medical)
    assert medical_llr(summary)[0] == pytest.approx(expected)
    assert np.isnan(medical_llr(summary)[1])
