"""The divergence stage over a study: its top contexts are the rows a brute-force loop over the token set ranks
first by their text positions (each row run alone, KL summed over the vocabulary by hand, boundaries found by a
walk back to the last separator), with corpus row ids, and each arm's features on the top 1% most divergent text
tokens of that loop have the mean activations it finds there and on the other text tokens; the boundary figures
(how many, their KL, their share of the top 1% of all positions) are that loop's; a model against itself diverges
nowhere and enriches no feature (tests/precompute/test_diff.py)."""

import math

import duckdb
import numpy as np
import pytest
import torch

from core.config import DiffConfig
from core.corpus import load_corpus_rows, token_set
from core.loading import load_arm
from pair_study import CONTEXT, build_pair_study


def query(config, sql, params=()):
    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql, params).df()


@pytest.fixture(scope="module")
def noisy_pair(tmp_path_factory):
    """Arm B's model moved by noise of std 0.3: the two predict differently everywhere, by varying amounts."""
    return build_pair_study(tmp_path_factory.mktemp("noisy"), diff_tokens=CONTEXT * 12, finetuned_noise=0.3)


FIRST = DiffConfig().boundary_tokens  # the study leaves diff.boundary_tokens at its default, 3


def boundary_by_hand(ids: list[int], special: set[int]) -> list[bool]:
    """Per BOS-less position i: the token it predicts (row position i + 2; past the row's end, text) is a separator,
    or at most FIRST tokens after the last separator before it (BOS, position 0, counts as one)."""
    out = []
    for i in range(len(ids) - 1):
        q = i + 2
        if q < len(ids) and ids[q] in special:
            out.append(True)
            continue
        last = max(p for p in range(q) if p == 0 or ids[p] in special)
        out.append(q - last <= FIRST)
    return out


@pytest.fixture(scope="module")
def brute_force(noisy_pair):
    """corpus row -> (KL per BOS-less position, log p_b - log p_a of the next token, (base's, finetuned's) SAE
    activations per BOS-less position [T - 1, d_sae] each, every arm's SAE on its own model, boundary per BOS-less
    position), one row at a time."""
    base, finetuned = (load_arm(arm, "cpu") for arm in noisy_pair.arms)
    tokenizer = base.model.tokenizer
    rows = load_corpus_rows(noisy_pair.corpus, tokenizer)
    out = {}
    for row in token_set(noisy_pair.corpus, noisy_pair.diff.tokens).rows:
        ids = rows[row:row + 1]
        with torch.no_grad():
            p, q = (arm.model(ids)[0, 1:].double().log_softmax(-1) for arm in (base, finetuned))
            acts = tuple(arm.sae.encode(arm.model.run_with_cache(ids, names_filter=[arm.hook_name])[1][arm.hook_name]
                                        [0, 1:]).double().numpy() for arm in (base, finetuned))
        kl = [float(sum(p[i].exp() * (p[i] - q[i]))) for i in range(ids.shape[1] - 1)]
        change = [float(q[i, ids[0, i + 2]] - p[i, ids[0, i + 2]]) for i in range(ids.shape[1] - 2)]
        boundary = boundary_by_hand(ids[0].tolist(), {tokenizer.bos_token_id, tokenizer.eos_token_id})
        out[row] = (np.array(kl), np.array(change), acts, np.array(boundary))
    return out


def text_positions(brute_force):
    """(KL, corpus row, BOS-less index) of every text position."""
    return [(kl, row, i) for row, (kls, _, _, bound) in brute_force.items() for i, kl in enumerate(kls)
            if not bound[i]]


@pytest.mark.slow
def test_top_contexts_are_the_rows_a_brute_force_loop_ranks_first_by_their_text(noisy_pair, brute_force):
    expected = brute_force
    text_kl = {r: kl[~bound] for r, (kl, _, _, bound) in expected.items()}
    ranking = sorted(expected, key=lambda r: (-text_kl[r].mean(), r))
    stored = query(noisy_pair, "SELECT * FROM divergence_contexts ORDER BY rank")
    assert stored.row_index.tolist() == ranking  # 12 rows, fewer than the 50 kept: every row, best first
    assert stored["rank"].tolist() == list(range(12))
    for context in stored.itertuples():
        kl, change, _, bound = expected[context.row_index]
        np.testing.assert_allclose(context.kl, kl, rtol=1e-3, atol=1e-6)  # every position's, boundaries too
        np.testing.assert_allclose(context.logprob_change[:-1], change, rtol=1e-3, atol=1e-5)
        assert context.boundary.tolist() == bound.tolist()
        assert context.mean_kl == pytest.approx(text_kl[context.row_index].mean(), rel=1e-4)
        assert context.max_index == int(np.where(bound, -np.inf, kl).argmax())
        assert len(context.tokens) == len(context.token_ids) == CONTEXT - 1
    last = query(noisy_pair, "SELECT logprob_change[len(logprob_change)] IS NULL AS null FROM divergence_contexts")
    assert last["null"].all()  # the last token has no next one
    rows = query(noisy_pair, "SELECT row_index, mean_kl FROM divergence_rows ORDER BY row_index")
    assert rows.row_index.tolist() == sorted(expected)
    texts = sorted((kl for kl, _, _ in text_positions(expected)), reverse=True)
    n_divergent = math.ceil(0.01 * len(texts))
    metrics = query(noisy_pair, "SELECT metric, value FROM metrics WHERE stage = 'divergence'")
    values = dict(zip(metrics.metric, metrics.value))
    assert values["n_divergent"] == n_divergent and values["n_tokens"] == 12 * (CONTEXT - 1)
    assert values["divergent_threshold"] == pytest.approx(texts[n_divergent - 1], rel=1e-3)


@pytest.mark.slow
def test_the_boundary_figures_are_the_brute_force_loops(noisy_pair, brute_force):
    """Boundaries: how many, their mean KL against the text's, and how many of the top 1% of all positions by KL
    (ceil(1% of 372) = 4) they are; every row has some (BOS's first tokens) and some rows a separator."""
    every = [(kl, row, i, bool(bound[i])) for row, (kls, _, _, bound) in brute_force.items()
             for i, kl in enumerate(kls)]
    bound = np.array([b for *_, b in every])
    kl = np.array([k for k, *_ in every])
    top = sorted(every, key=lambda p: (-p[0], p[1], p[2]))[:4]
    assert top[3][0] > (1 + 1e-3) * sorted(kl)[-5]  # one cut for float32 and float64 alike
    metrics = query(noisy_pair, "SELECT metric, value FROM metrics WHERE stage = 'divergence'")
    values = dict(zip(metrics.metric, metrics.value))
    assert values["boundary_tokens"] == FIRST and values["n_boundary"] == bound.sum()
    assert values["boundary_share"] == pytest.approx(bound.mean())
    assert values["boundary_share_of_top"] == sum(b for *_, b in top) / 4
    assert values["mean_kl_boundary"] == pytest.approx(kl[bound].mean(), rel=1e-4)
    assert values["mean_kl_text"] == pytest.approx(kl[~bound].mean(), rel=1e-4)
    assert values["mean_kl"] == pytest.approx(kl.mean(), rel=1e-4)
    separators = sum(bool(b[FIRST:-1].any()) for *_, b in brute_force.values())  # past BOS's first tokens
    assert 0.15 < bound.mean() < 0.6 and separators >= 6


@pytest.mark.slow
def test_each_arms_features_on_the_most_divergent_tokens_are_the_brute_force_means(noisy_pair, brute_force):
    """divergence_features, per feature of each arm: the mean activation over the top 1% of text positions by the
    brute-force loop's KL against the mean over the other text positions, and how often it fires in each set."""
    positions = text_positions(brute_force)
    ranked = sorted(positions, key=lambda p: (-p[0], p[1], p[2]))
    n_divergent = math.ceil(0.01 * len(positions))
    # the last chosen and the first left out differ far beyond float32's error on a KL: one cut for both
    assert n_divergent >= 2 and ranked[n_divergent - 1][0] > (1 + 1e-3) * ranked[n_divergent][0]
    stored = query(noisy_pair, "SELECT * FROM divergence_features ORDER BY arm, feature")
    assert sorted(set(stored.arm)) == ["base", "finetuned"]
    for k, arm in enumerate(("base", "finetuned")):
        there = np.array([brute_force[row][2][k][i] for _, row, i in ranked[:n_divergent]])  # [n, d_sae]
        elsewhere = np.array([brute_force[row][2][k][i] for _, row, i in ranked[n_divergent:]])  # the other text
        table = stored[stored.arm == arm]
        assert table.feature.tolist() == list(range(there.shape[1]))
        np.testing.assert_allclose(table.mean_divergent, there.mean(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(table.mean_elsewhere, elsewhere.mean(0), rtol=1e-4, atol=1e-6)
        assert table.fired_divergent.tolist() == (there > 0).sum(0).tolist()
        assert table.fired_elsewhere.tolist() == (elsewhere > 0).sum(0).tolist()
        assert there.mean(0).max() > 0  # some feature fires there: the means are not all zero by construction
