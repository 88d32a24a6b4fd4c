"""Divergence over a corpus: the running top rows and divergent tokens equal a brute-force ranking over text
positions (boundaries left out, counted apart), shards merge to the single pass, divergence planted on boundaries
leaves the text ranking as it was, a model against itself diverges nowhere, and a changed unembedding diverges
exactly where it moved its token's probability."""

import copy
import math

import numpy as np
import pytest
import torch

from core.boundaries import boundary_mask
from core.divergence import KL_FLOOR, DivergenceAccumulator, corpus_divergence, next_token_divergence
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer

N_ROWS, T, D_SAE = 23, 9, (6, 5)


SEPARATOR = 0  # the synthetic rows' BOS and separator id (as byte_tokenizer's <|endoftext|>)
FIRST_TOKENS = 2  # the synthetic rows' boundary_tokens


def synthetic(seed: int = 0, boundaries: bool = True):
    """Rows with rounded KLs (many ties, some rows all zero), sparse non-negative activations and tokens 0..9 with
    BOS (0) first and separators (0) inside (about 1 in 10 tokens); `boundaries`: the boundary mask over the BOS-less
    positions (core.boundaries with FIRST_TOKENS; else none). Rows 5 and 17 are one document each, no boundary
    after the first token BOS makes one; row 11 is all boundaries (a separator every other token), so it has no text mean."""
    rng = np.random.default_rng(seed)
    kl = np.round(rng.exponential(0.3, (N_ROWS, T - 1)), 1).astype(np.float32)
    kl[[2, 9]] = 0.0
    acts = [np.where(rng.random((N_ROWS, T - 1, d)) < 0.3, rng.random((N_ROWS, T - 1, d)), 0.0).astype(np.float32)
            for d in D_SAE]
    tokens = rng.integers(0, 10, (N_ROWS, T))
    tokens[:, 0] = SEPARATOR
    tokens[[5, 17], 1:] = np.maximum(tokens[[5, 17], 1:], 1)
    tokens[11, ::2] = SEPARATOR
    change = rng.normal(size=(N_ROWS, T - 1)).astype(np.float32)
    row_ids = rng.permutation(1000)[:N_ROWS]  # corpus rows need not be 0..n nor sorted
    special, first = ((SEPARATOR,), FIRST_TOKENS) if boundaries else ((), 0)
    boundary = boundary_mask(torch.tensor(tokens), special, first).numpy()
    return row_ids, tokens, kl, change, acts, boundary


def fold(accumulator, data, rows):
    row_ids, tokens, kl, change, acts, boundary = data
    accumulator.update(row_ids[rows], torch.tensor(tokens[rows]), torch.tensor(kl[rows]), torch.tensor(change[rows]),
                       torch.tensor(acts[0][rows]), torch.tensor(acts[1][rows]), torch.tensor(boundary[rows]))
    return accumulator


def row_text_mean(kl_row, boundary_row) -> float:
    text = [float(k) for k, b in zip(kl_row, boundary_row) if not b]
    return sum(text) / len(text) if text else math.nan


def brute_force(data, n_contexts, n_divergent, n_top):
    """The rows by mean text KL (NaN last), the divergent text positions, each arm's mean activation there and on
    the other text positions, and the top n_top of every position by KL with each one's kind."""
    row_ids, _, kl, _, acts, boundary = data
    means = {r: row_text_mean(kl[r], boundary[r]) for r in range(N_ROWS)}
    by_row = sorted(range(N_ROWS), key=lambda r: (math.isnan(means[r]), -np.nan_to_num(means[r]),
                                                  row_ids[r]))[:n_contexts]
    every = [(float(kl[r, p]), row_ids[r], p, r, bool(boundary[r, p])) for r in range(N_ROWS) for p in range(T - 1)
             if kl[r, p] > KL_FLOOR]
    top = sorted(every, key=lambda x: (-x[0], x[1], x[2]))[:n_top]
    chosen = sorted([x for x in every if not x[4]], key=lambda x: (-x[0], x[1], x[2]))[:n_divergent]
    n_text = int((~boundary).sum())
    activations = []
    for a in acts:
        on = sum((a[r, p].astype(np.float64) for _, _, p, r, _ in chosen), np.zeros(a.shape[2]))
        text_sum = sum((a[r, p].astype(np.float64) for r in range(N_ROWS) for p in range(T - 1)
                        if not boundary[r, p]), np.zeros(a.shape[2]))
        activations.append((on / len(chosen), (text_sum - on) / (n_text - len(chosen))))
    return [row_ids[r] for r in by_row], chosen, activations, top


def test_the_synthetic_rows_have_text_and_boundaries_in_every_kind():
    data = synthetic()
    boundary = data[5]
    assert boundary[11].all() and not boundary[5, FIRST_TOKENS - 1:].any() and boundary[5, :FIRST_TOKENS - 1].all()
    assert 0.2 < boundary.mean() < 0.6  # separators ~1 in 10: each makes up to 4 boundary positions


@pytest.mark.parametrize("boundaries", [False, True])
@pytest.mark.parametrize("n_contexts, n_divergent, n_top", [(5, 12, 7), (30, 500, 500)])
def test_top_rows_and_divergent_tokens_equal_a_brute_force_ranking(n_contexts, n_divergent, n_top, boundaries):
    data = synthetic(boundaries=boundaries)
    accumulator = DivergenceAccumulator(n_contexts, n_divergent, D_SAE, n_top)
    for rows in (slice(0, 3), slice(3, 4), slice(4, 15), slice(15, N_ROWS)):
        fold(accumulator, data, rows)
    result = accumulator.result()
    rows, chosen, means, top = brute_force(data, n_contexts, n_divergent, n_top)
    assert result.contexts.row.tolist() == rows
    index = {r: i for i, r in enumerate(data[0])}
    for k, row in enumerate(rows):
        assert result.contexts.kl[k].tolist() == data[2][index[row]].tolist()
        assert result.contexts.token_ids[k].tolist() == data[1][index[row], 1:].tolist()
        assert result.contexts.boundary[k].tolist() == data[5][index[row]].tolist()
    assert result.n_divergent == len(chosen) and result.divergent_threshold == pytest.approx(chosen[-1][0])
    for enrichment, (on, off) in zip(result.enrichment, means):
        np.testing.assert_allclose(enrichment.mean_divergent, on, rtol=1e-9)
        np.testing.assert_allclose(enrichment.mean_elsewhere, off, rtol=1e-9)
    assert result.row.tolist() == sorted(data[0].tolist())
    first = result.row.tolist().index(data[0][0])
    assert result.row_mean_kl[first] == pytest.approx(row_text_mean(data[2][0], data[5][0]))
    figures = result.boundaries
    assert (figures.n_top, figures.n_top_boundary) == (len(top), sum(x[4] for x in top))
    assert figures.n_boundary == int(data[5].sum()) and figures.n_text + figures.n_boundary == N_ROWS * (T - 1)
    assert figures.mean_kl_boundary == pytest.approx(data[2][data[5]].astype(np.float64).mean() if boundaries
                                                     else math.nan, nan_ok=True)
    assert figures.mean_kl_text == pytest.approx(data[2][~data[5]].astype(np.float64).mean())
    if boundaries:  # rows of boundaries only (11, and a few by chance) have no text mean and rank last
        eleven = result.row.tolist().index(data[0][11])
        assert math.isnan(result.row_mean_kl[eleven]) and math.isnan(result.row_max_kl[eleven])
        no_text = {data[0][r] for r in range(N_ROWS) if data[5][r].all()}
        assert n_contexts < N_ROWS or set(result.contexts.row[-len(no_text):]) == no_text


def test_divergence_planted_on_boundaries_tops_the_boundary_share_and_leaves_the_text_ranking_alone():
    """KL raised by 50 nats on every boundary position: all of the top positions over all tokens are boundaries,
    and the rows, divergent tokens and enrichment ranked on text are exactly those of the unplanted rows."""
    data = synthetic(2)
    planted = list(data)
    planted[2] = np.where(data[5], data[2] + 50.0, data[2]).astype(np.float32)
    n_top = int(data[5].sum()) // 2
    results = [fold(DivergenceAccumulator(6, 15, D_SAE, n_top), d, slice(0, N_ROWS)).result()
               for d in (data, tuple(planted))]
    clean, boundary_heavy = results
    assert boundary_heavy.boundaries.boundary_share_of_top == 1.0
    assert clean.boundaries.boundary_share_of_top < 0.6  # unplanted, boundaries are no more divergent than text
    assert boundary_heavy.boundaries.mean_kl_boundary == pytest.approx(clean.boundaries.mean_kl_boundary + 50.0)
    assert boundary_heavy.boundaries.mean_kl_text == clean.boundaries.mean_kl_text
    assert boundary_heavy.contexts.row.tolist() == clean.contexts.row.tolist()
    np.testing.assert_array_equal(boundary_heavy.contexts.mean_kl, clean.contexts.mean_kl)
    np.testing.assert_array_equal(boundary_heavy.row_max_index, clean.row_max_index)
    assert (boundary_heavy.n_divergent, boundary_heavy.divergent_threshold) == (clean.n_divergent,
                                                                                 clean.divergent_threshold)
    for heavy, plain in zip(boundary_heavy.enrichment, clean.enrichment):
        np.testing.assert_array_equal(heavy.mean_divergent, plain.mean_divergent)
        np.testing.assert_array_equal(heavy.fired_elsewhere, plain.fired_elsewhere)


def test_shards_merged_in_any_order_give_the_single_pass():
    data = synthetic(1)
    single = fold(DivergenceAccumulator(7, 20, D_SAE, 9), data, slice(0, N_ROWS)).result()
    shards = [fold(DivergenceAccumulator(7, 20, D_SAE, 9), data, rows)
              for rows in (slice(12, N_ROWS), slice(0, 5), slice(5, 12))]
    merged = shards[0].merge(shards[1]).merge(shards[2]).result()
    assert merged.contexts.row.tolist() == single.contexts.row.tolist()
    np.testing.assert_array_equal(merged.contexts.kl, single.contexts.kl)
    np.testing.assert_array_equal(merged.contexts.boundary, single.contexts.boundary)
    assert merged.n_divergent == single.n_divergent
    for m, s in zip(merged.enrichment, single.enrichment):
        np.testing.assert_allclose(m.mean_divergent, s.mean_divergent, rtol=1e-12)
        np.testing.assert_array_equal(m.fired_divergent, s.fired_divergent)
    np.testing.assert_array_equal(merged.row_mean_kl, single.row_mean_kl)
    assert merged.boundaries.n_top_boundary == single.boundaries.n_top_boundary
    assert merged.boundaries.sum_kl_boundary == pytest.approx(single.boundaries.sum_kl_boundary, rel=1e-12)


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


def moved_unembedding(model, rows, moves):
    """A copy of `model` in which, for each (row, BOS-less token index, token, logit), W_U[:, token] moves
    orthogonally to the final residual of every position but that one (20 positions in 32 dimensions), raising the
    token's logit there by `logit`: only those positions' distributions change."""
    _, cache = model.run_with_cache(rows, names_filter=["ln_final.hook_normalized"])
    flat = cache["ln_final.hook_normalized"].double().reshape(-1, model.cfg.d_model)
    changed = copy.deepcopy(model)
    for row, index, token, logit in moves:
        target = row * rows.shape[1] + index + 1
        q, _ = torch.linalg.qr(torch.cat([flat[:target], flat[target + 1:]]).T)
        u = flat[target] - q @ (q.T @ flat[target])
        with torch.no_grad():
            changed.W_U[:, token] += (logit * u / (u @ flat[target])).float()
    return changed


def test_a_separator_that_diverges_is_reported_as_boundary_and_the_text_ranking_reads_the_text(model):
    """Row 0 holds a separator (row position 4, BOS-less index 3): the prediction after it moves by a lot; one text
    position of row 1 (index 7) moves by less. With 2 first tokens, row 0's indices 0, 2, 3, 4 (predicting a
    document's 2nd token, the separator, the next document's 1st and 2nd) and row 1's 0 are boundaries (5 of 18). The most divergent position of all is the separator (boundary share of the top 1: 1), while the text
    ranking puts row 1 first, peaking at 7, though row 0's mean over every position is the larger."""
    ids = model.to_tokens(TEXT)[0]
    eos = model.tokenizer.eos_token_id
    body = ids[1:]
    rows = torch.stack([torch.cat([ids[:1], body[:3], torch.tensor([eos]), body[3:]]),
                        torch.cat([ids[:1], body.flip(0), body[:1]])])
    assert rows.shape == (2, 10) and (rows[:, 1:] == eos).sum() == 1
    heart, kidney = model.tokenizer.convert_tokens_to_ids(["Ġheart", "Ġkidney"])
    changed = moved_unembedding(model, rows, [(0, 3, heart, 30.0), (1, 7, kidney, 10.0)])
    with torch.no_grad():
        kl, _ = next_token_divergence(model(rows), changed(rows), rows)
    others = torch.ones_like(kl, dtype=torch.bool)
    others[0, 3] = others[1, 7] = False
    assert (kl[others] < KL_FLOOR).all() and kl[0, 3] > kl[1, 7] > 0.01
    a = arm(model, "base")
    b = LoadedArm("finetuned", changed, a.sae, EMBED_HOOK, 8, "cpu", DEFAULT_PROCESSING)
    result = corpus_divergence(a, b, rows, [3, 8], n_contexts=2, share=0.05, rows_per_batch=1, special_ids=(eos,),
                               boundary_tokens=2)
    figures = result.boundaries
    assert (figures.n_boundary, figures.n_text) == (5, 13)
    assert (figures.n_top, figures.boundary_share_of_top) == (1, 1.0)  # ceil(5% of 18) = 1: the separator
    assert figures.mean_kl_boundary == pytest.approx(float(kl[0, 3]) / 5, rel=1e-4)
    assert figures.mean_kl_text == pytest.approx(float(kl[1, 7]) / 13, rel=1e-4)
    assert result.n_divergent == 1 and result.divergent_threshold == pytest.approx(float(kl[1, 7]), rel=1e-5)
    assert result.contexts.row.tolist() == [8, 3]  # by text: row 1 (corpus row 8) first
    assert result.row_max_index[1] == 7 and result.row_max_kl[0] < KL_FLOOR  # rows ascending: 3, then 8
    assert result.contexts.boundary[1].tolist() == [True, False, True, True, True] + [False] * 4
    assert result.contexts.kl[1][3] == pytest.approx(float(kl[0, 3]), rel=1e-5)  # every position's KL is kept
    assert result.mean_kl == pytest.approx(float(kl.double().mean()), rel=1e-4)
