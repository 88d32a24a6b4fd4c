"""Activation statistics against brute force on small synthetic activations fed in several batches."""

import numpy as np
import pytest
import torch

from core.activations import HIST_EDGES, INTERVAL_EDGES, ActivationAccumulator, medical_llr, sample_priority
from core.config import ActivationsConfig

N_ROWS, T, D_SAE, D_VOCAB = 24, 12, 6, 20
CONFIG = ActivationsConfig(batch_size=5, top_contexts=4, window_before=3, window_after=2, samples_per_interval=2,
                           fired_tokens=3)


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


def accumulate(acts, tokens, rows, medical=None, batch_size=CONFIG.batch_size, seed=0):
    medical = torch.zeros(D_VOCAB, dtype=torch.bool) if medical is None else medical
    acc = ActivationAccumulator(acts.shape[2], D_VOCAB, CONFIG, medical, seed=seed)
    n_rows = acts.shape[0]
    for start in range(0, n_rows, batch_size):
        stop = start + batch_size
        acc.update(acts[start:stop], tokens[start:stop], torch.arange(start, min(stop, n_rows)))
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


def brute_force_samples(acts, f, interval, seed=0):
    """The reference: every firing (row, BOS-less position) of feature f whose own activation is in the interval,
    ranked by sample_priority (ties by row, position); the first samples_per_interval of them."""
    a = acts[..., f]
    rows, positions = torch.nonzero(a > 0, as_tuple=True)
    values = a[rows, positions].numpy()
    interval_of = np.clip(np.searchsorted(INTERVAL_EDGES, values, side="right") - 1, 0, len(INTERVAL_EDGES) - 2)
    inside = interval_of == interval
    rows, positions = rows[inside], positions[inside]
    priority = sample_priority(seed, rows, positions, torch.full_like(rows, f)).numpy()
    order = np.lexsort((positions.numpy(), rows.numpy(), -priority))[:CONFIG.samples_per_interval]
    return {(int(rows[i]), int(positions[i])) for i in order}, int(inside.sum())


def test_interval_samples_are_firing_tokens_chosen_exactly_as_the_brute_force_reference():
    acts, tokens, rows = synthetic()
    summary = accumulate(acts, tokens, rows)
    samples = summary.intervals
    for f in range(D_SAE):
        for interval in range(len(INTERVAL_EDGES) - 1):
            expected, available = brute_force_samples(acts, f, interval)
            slots = np.nonzero((summary.interval_index == interval) & (samples.row[f] >= 0))[0]
            assert len(slots) == min(CONFIG.samples_per_interval, available)
            chosen = {(int(samples.row[f, s]), int(samples.max_pos[f, s]) - 1) for s in slots}
            assert chosen == expected
            for s in slots:  # the sample's activation is its own token's, its window is centred on that token
                r, p = int(samples.row[f, s]), int(samples.max_pos[f, s]) - 1
                assert samples.max_act[f, s] == pytest.approx(float(acts[r, p, f]))
                assert samples.window_token_ids[f, s, 3] == tokens[r, p]
                assert samples.window_acts[f, s, 3] == pytest.approx(float(acts[r, p, f]))
    assert (samples.row[5] == -1).all()


def test_interval_samples_do_not_depend_on_batching_but_on_the_seed():
    acts, tokens, rows = synthetic()
    a, b = accumulate(acts, tokens, rows, batch_size=5), accumulate(acts, tokens, rows, batch_size=24)
    np.testing.assert_array_equal(a.intervals.row, b.intervals.row)
    np.testing.assert_array_equal(a.intervals.max_pos, b.intervals.max_pos)
    other_seed = accumulate(acts, tokens, rows, seed=1)
    assert not np.array_equal(a.intervals.max_pos, other_seed.intervals.max_pos)


def test_a_dense_feature_gets_samples_in_its_weak_intervals():
    """Planted: one feature fires on every token, 0.02 to 0.9 across a row and 50 at the row's last token.
    Every row's max lies in one interval, so samples by row max filled only that one; by token, each interval
    the weak firings cover gets its own samples."""
    n_rows, length = 12, 10
    acts = torch.zeros(n_rows, length, 1)
    acts[:, :, 0] = torch.logspace(np.log10(0.02), np.log10(0.9), length)
    acts[:, -1, 0] = 50.0
    tokens = torch.zeros(n_rows, length, dtype=torch.long)
    rows = torch.cat([torch.zeros(n_rows, 1, dtype=torch.long), tokens], dim=1)
    summary = accumulate(acts, tokens, rows)
    filled = summary.intervals.row[0] >= 0
    interval_of = np.searchsorted(INTERVAL_EDGES, acts[0, :, 0].numpy(), side="right") - 1
    assert set(summary.interval_index[filled]) == set(interval_of)  # 0.02 ... 0.9 and 50: seven intervals
    assert len(set(interval_of)) == 7
    weakest = summary.interval_index[filled] == interval_of[0]
    assert weakest.sum() == CONFIG.samples_per_interval
    np.testing.assert_allclose(summary.intervals.max_act[0][filled][weakest], 0.02, rtol=1e-5)


def test_fired_tokens_are_counted_per_token_id_like_a_brute_force_tally():
    acts, tokens, rows = synthetic()
    summary = accumulate(acts, tokens, rows)
    fired = summary.fired_tokens
    for f in range(D_SAE):
        a = acts[..., f]
        counts = np.bincount(tokens[a > 0].numpy(), minlength=D_VOCAB)
        sums = np.bincount(tokens[a > 0].numpy(), weights=a[a > 0].double().numpy(), minlength=D_VOCAB)
        ranked = [t for t in np.lexsort((np.arange(D_VOCAB), -sums, -counts)) if counts[t] > 0][:CONFIG.fired_tokens]
        filled = fired.token_id[f] >= 0
        assert fired.token_id[f][filled].tolist() == ranked
        np.testing.assert_array_equal(fired.count[f][filled], counts[ranked])
        np.testing.assert_allclose(fired.sum_act[f][filled], sums[ranked], rtol=1e-9)
    assert (fired.token_id[5] == -1).all() and (fired.count[5] == 0).all()


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
