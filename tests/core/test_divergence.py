"""Divergence over a corpus: the running top rows and divergent tokens equal a brute-force ranking, shards merge
to the single pass, a model against itself diverges nowhere, and a changed unembedding diverges exactly where it
moved its token's probability."""

import copy

import numpy as np
import pytest
import torch

from core.divergence import KL_FLOOR, DivergenceAccumulator, corpus_divergence, next_token_divergence
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer

N_ROWS, T, D_SAE = 23, 9, (6, 5)


def synthetic(seed: int = 0):
    """Rows with rounded KLs (many ties, some rows all zero) and sparse non-negative activations."""
    rng = np.random.default_rng(seed)
    kl = np.round(rng.exponential(0.3, (N_ROWS, T - 1)), 1).astype(np.float32)
    kl[[2, 9]] = 0.0
    acts = [np.where(rng.random((N_ROWS, T - 1, d)) < 0.3, rng.random((N_ROWS, T - 1, d)), 0.0).astype(np.float32)
            for d in D_SAE]
    tokens = rng.integers(0, 50, (N_ROWS, T))
    change = rng.normal(size=(N_ROWS, T - 1)).astype(np.float32)
    row_ids = rng.permutation(1000)[:N_ROWS]  # corpus rows need not be 0..n nor sorted
    return row_ids, tokens, kl, change, acts


def fold(accumulator, data, rows):
    row_ids, tokens, kl, change, acts = data
    accumulator.update(row_ids[rows], torch.tensor(tokens[rows]), torch.tensor(kl[rows]), torch.tensor(change[rows]),
                       torch.tensor(acts[0][rows]), torch.tensor(acts[1][rows]))
    return accumulator


def brute_force(data, n_contexts, n_divergent):
    row_ids, _, kl, _, acts = data
    by_row = sorted(range(N_ROWS), key=lambda r: (-kl[r].astype(np.float64).mean(), row_ids[r]))[:n_contexts]
    positions = [(float(kl[r, p]), row_ids[r], p, r) for r in range(N_ROWS) for p in range(T - 1)
                 if kl[r, p] > KL_FLOOR]
    chosen = sorted(positions, key=lambda x: (-x[0], x[1], x[2]))[:n_divergent]
    means = []
    for a in acts:
        on = sum((a[r, p].astype(np.float64) for _, _, p, r in chosen), np.zeros(a.shape[2]))
        means.append((on / len(chosen), (a.astype(np.float64).sum((0, 1)) - on) / (N_ROWS * (T - 1) - len(chosen))))
    return [row_ids[r] for r in by_row], chosen, means


@pytest.mark.parametrize("n_contexts, n_divergent", [(5, 12), (30, 500)])
def test_top_rows_and_divergent_tokens_equal_a_brute_force_ranking(n_contexts, n_divergent):
    data = synthetic()
    accumulator = DivergenceAccumulator(n_contexts, n_divergent, D_SAE)
    for rows in (slice(0, 3), slice(3, 4), slice(4, 15), slice(15, N_ROWS)):
        fold(accumulator, data, rows)
    result = accumulator.result()
    rows, chosen, means = brute_force(data, n_contexts, n_divergent)
    assert result.contexts.row.tolist() == rows
    index = {r: i for i, r in enumerate(data[0])}
    for k, row in enumerate(rows):
        assert result.contexts.kl[k].tolist() == data[2][index[row]].tolist()
        assert result.contexts.token_ids[k].tolist() == data[1][index[row], 1:].tolist()
    assert result.n_divergent == len(chosen) and result.divergent_threshold == pytest.approx(chosen[-1][0])
    for enrichment, (on, off) in zip(result.enrichment, means):
        np.testing.assert_allclose(enrichment.mean_divergent, on, rtol=1e-9)
        np.testing.assert_allclose(enrichment.mean_elsewhere, off, rtol=1e-9)
    assert result.row.tolist() == sorted(data[0].tolist())
    assert result.row_mean_kl[result.row.tolist().index(data[0][0])] == pytest.approx(data[2][0].mean())


def test_shards_merged_in_any_order_give_the_single_pass():
    data = synthetic(1)
    single = fold(DivergenceAccumulator(7, 20, D_SAE), data, slice(0, N_ROWS)).result()
    shards = [fold(DivergenceAccumulator(7, 20, D_SAE), data, rows)
              for rows in (slice(12, N_ROWS), slice(0, 5), slice(5, 12))]
    merged = shards[0].merge(shards[1]).merge(shards[2]).result()
    assert merged.contexts.row.tolist() == single.contexts.row.tolist()
    np.testing.assert_array_equal(merged.contexts.kl, single.contexts.kl)
    assert merged.n_divergent == single.n_divergent
    for m, s in zip(merged.enrichment, single.enrichment):
        np.testing.assert_allclose(m.mean_divergent, s.mean_divergent, rtol=1e-12)
        np.testing.assert_array_equal(m.fired_divergent, s.fired_divergent)
    np.testing.assert_array_equal(merged.row_mean_kl, single.row_mean_kl)


EMBED_HOOK = "blocks.0.hook_resid_pre"
TEXT = "the heart and the kidney, the heart"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The 2-layer, d_model 32 GPT-2 of the Inspect tests (context 32, weights std 0.5)."""
    folder = build_gpt2_folder(tmp_path_factory.mktemp("divergence") / "model", byte_tokenizer(), n_positions=32,
                               initializer_range=0.5)
    hf, tok = load_hf_model(str(folder))
    return hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")


def arm(model, name):
    return LoadedArm(name, model, build_sae(d_in=32, d_sae=8, hook_name=EMBED_HOOK), EMBED_HOOK, 8, "cpu",
                     DEFAULT_PROCESSING)


def two_rows(model):
    """TEXT and TEXT's tokens reversed, BOS first: 2 rows of 10 (different positions, so different residuals)."""
    ids = model.to_tokens(TEXT)[0]
    return torch.stack([ids, torch.cat([ids[:1], ids[1:].flip(0)])])


def test_a_model_against_itself_diverges_nowhere_and_enriches_nothing(model):
    a = arm(model, "base")
    b = LoadedArm("finetuned", copy.deepcopy(model), a.sae, EMBED_HOOK, 8, "cpu", DEFAULT_PROCESSING)
    rows = two_rows(model)
    result = corpus_divergence(a, b, rows, [40, 7], n_contexts=5, share=0.5, rows_per_batch=1)
    assert result.row.tolist() == [7, 40] and result.row_max_kl.tolist() == [0.0, 0.0]
    assert result.contexts.row.tolist() == [7, 40]  # all tied at 0: lower corpus row first
    assert result.n_divergent == 0 and np.isnan(result.divergent_threshold)
    acts = a.sae.encode(model.run_with_cache(rows, names_filter=[EMBED_HOOK])[1][EMBED_HOOK][:, 1:]).detach()
    for enrichment in result.enrichment:
        assert np.isnan(enrichment.mean_divergent).all() and (enrichment.fired_divergent == 0).all()
        np.testing.assert_allclose(enrichment.mean_elsewhere, acts.double().mean((0, 1)).numpy(), rtol=1e-6)


def test_kl_is_positive_exactly_where_a_changed_unembedding_moved_its_token(model):
    """As in the Inspect test: W_U[:, "Ġkidney"] moves orthogonally to the final residual of every position of both
    rows but one (19 positions in 32 dimensions), so only that position's distribution changes."""
    rows = two_rows(model)
    target_row, moved = 0, 2  # token index 2 (BOS left out) of the first row
    kidney = model.tokenizer.convert_tokens_to_ids("Ġkidney")
    _, cache = model.run_with_cache(rows, names_filter=["ln_final.hook_normalized"])
    resid = cache["ln_final.hook_normalized"].double()  # [2, 10, d_model]
    flat = resid.reshape(-1, resid.shape[-1])
    target = target_row * rows.shape[1] + moved + 1
    q, _ = torch.linalg.qr(torch.cat([flat[:target], flat[target + 1:]]).T)
    u = flat[target] - q @ (q.T @ flat[target])
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.W_U[:, kidney] += (15.0 * u / (u @ flat[target])).float()
    a = arm(model, "base")
    b = LoadedArm("finetuned", changed, a.sae, EMBED_HOOK, 8, "cpu", DEFAULT_PROCESSING)
    result = corpus_divergence(a, b, rows, [3, 8], n_contexts=2, share=0.5, rows_per_batch=2)
    with torch.no_grad():
        kl, _ = next_token_divergence(model(rows), changed(rows), rows)
    assert kl[target_row, moved] > 0.01
    others = torch.ones_like(kl, dtype=torch.bool)
    others[target_row, moved] = False
    assert (kl[others] < KL_FLOOR).all()
    assert result.n_divergent == 1 and result.divergent_threshold == pytest.approx(float(kl[target_row, moved]))
    assert result.contexts.row.tolist() == [3, 8]  # the row that moved ranks first
    assert result.row_max_index[0] == moved and result.row_max_kl[1] < KL_FLOOR
    acts = a.sae.encode(model.run_with_cache(rows, names_filter=[EMBED_HOOK])[1][EMBED_HOOK][:, 1:]).detach().double()
    here = acts[target_row, moved].numpy()
    np.testing.assert_allclose(result.enrichment[0].mean_divergent, here, rtol=1e-6)
    np.testing.assert_allclose(result.enrichment[0].mean_elsewhere,
                               (acts.sum((0, 1)).numpy() - here) / (acts.shape[0] * acts.shape[1] - 1), rtol=1e-6)
