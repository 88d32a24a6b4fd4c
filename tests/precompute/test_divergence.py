"""The divergence stage over a study: its top contexts are the rows a brute-force loop over the token set ranks
first (each row run alone, KL summed over the vocabulary by hand), with corpus row ids; a model against itself
diverges nowhere and enriches no feature."""

import duckdb
import numpy as np
import pytest
import torch

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


def brute_force(config):
    """corpus row -> (KL per BOS-less position, log p_b - log p_a of the next token), one row at a time."""
    base, finetuned = (load_arm(arm, "cpu") for arm in config.arms)
    rows = load_corpus_rows(config.corpus, base.model.tokenizer)
    out = {}
    for row in token_set(config.corpus, config.diff.tokens).rows:
        ids = rows[row:row + 1]
        with torch.no_grad():
            p, q = (arm.model(ids)[0, 1:].double().log_softmax(-1) for arm in (base, finetuned))
        kl = [float(sum(p[i].exp() * (p[i] - q[i]))) for i in range(ids.shape[1] - 1)]
        change = [float(q[i, ids[0, i + 2]] - p[i, ids[0, i + 2]]) for i in range(ids.shape[1] - 2)]
        out[row] = (np.array(kl), np.array(change))
    return out


@pytest.mark.slow
def test_top_contexts_are_the_rows_a_brute_force_loop_ranks_first(noisy_pair):
    expected = brute_force(noisy_pair)
    ranking = sorted(expected, key=lambda r: (-expected[r][0].mean(), r))
    stored = query(noisy_pair, "SELECT * FROM divergence_contexts ORDER BY rank")
    assert stored.row_index.tolist() == ranking  # 12 rows, fewer than the 50 kept: every row, best first
    assert stored["rank"].tolist() == list(range(12))
    for context in stored.itertuples():
        kl, change = expected[context.row_index]
        np.testing.assert_allclose(context.kl, kl, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(context.logprob_change[:-1], change, rtol=1e-3, atol=1e-5)
        assert context.mean_kl == pytest.approx(kl.mean(), rel=1e-4) and context.max_index == int(kl.argmax())
        assert len(context.tokens) == len(context.token_ids) == CONTEXT - 1
    last = query(noisy_pair, "SELECT logprob_change[len(logprob_change)] IS NULL AS null FROM divergence_contexts")
    assert last["null"].all()  # the last token has no next one
    rows = query(noisy_pair, "SELECT row_index, mean_kl FROM divergence_rows ORDER BY row_index")
    assert rows.row_index.tolist() == sorted(expected)
    all_kl = np.concatenate([expected[r][0] for r in sorted(expected)])
    n_divergent = int(np.ceil(0.01 * len(all_kl)))
    metrics = query(noisy_pair, "SELECT metric, value FROM metrics WHERE stage = 'divergence'")
    values = dict(zip(metrics.metric, metrics.value))
    assert values["n_divergent"] == n_divergent and values["n_tokens"] == 12 * (CONTEXT - 1)
    assert values["divergent_threshold"] == pytest.approx(np.sort(all_kl)[-n_divergent], rel=1e-3)
