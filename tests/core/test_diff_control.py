"""Differences against the control pair: the control's exceedance share, Benjamini–Hochberg q-values against the
textbook step-up, identical arms give no discovery, a planted change among control-like ones is found."""

import numpy as np

from core.diff_control import against_control, benjamini_hochberg, distance_from_match, exceedance


def test_exceedance_is_the_share_of_control_values_at_least_as_large():
    control = np.array([0.1, 0.2, 0.2, 0.5])
    stat = np.array([0.0, 0.2, 0.3, 0.6, np.nan])
    # 0.0: all 4 control values are >= it; 0.2: 3 (0.2, 0.2, 0.5); 0.3: 1; 0.6: none
    np.testing.assert_allclose(exceedance(stat, control), [1.0, 0.75, 0.25, 0.0, np.nan])
    assert np.isnan(exceedance(stat, np.array([np.nan]))).all()  # no control: nothing to compare with


def test_benjamini_hochberg_equals_the_textbook_step_up():
    rng = np.random.default_rng(0)
    p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.002, size=5)])
    q = benjamini_hochberg(p)
    order = np.argsort(p)
    m = len(p)
    expected = np.empty(m)
    running = 1.0
    for rank in range(m, 0, -1):  # step-up from the largest p
        running = min(running, p[order[rank - 1]] * m / rank)
        expected[order[rank - 1]] = running
    np.testing.assert_allclose(q, expected)
    # rejections at 0.05 are exactly the textbook's: the largest k with p_(k) <= k/m * 0.05, and all below it
    k = max([r for r in range(1, m + 1) if p[order[r - 1]] <= r / m * 0.05], default=0)
    assert set(np.flatnonzero(q <= 0.05)) == set(order[:k])
    assert np.isnan(benjamini_hochberg(np.array([0.01, np.nan]))[1])


def test_identical_arms_give_no_difference_beyond_the_control():
    corr = np.ones(500)  # every feature its own best match at 1.0, in the pair and in the control
    result = against_control(distance_from_match(corr), distance_from_match(corr), fdr=0.05)
    assert not result.beyond.any()
    assert (result.exceedance == 1.0).all()


def test_a_planted_change_is_beyond_a_control_of_training_noise_and_noise_is_not():
    rng = np.random.default_rng(1)
    control = rng.normal(0.9, 0.03, size=2000)  # the control pair: best-match correlations of retrained SAE features
    pair = rng.normal(0.9, 0.03, size=2000)  # the pair: mostly the same noise
    pair[7] = 0.2  # one feature the fine-tune changed
    result = against_control(distance_from_match(pair), distance_from_match(control), fdr=0.05)
    assert result.beyond[7] and result.exceedance[7] == 0.0
    assert result.beyond.sum() <= 3  # noise like the control's is (almost) never a discovery at 5% FDR
    assert result.n_control == 2000
    # 30 planted changes among 2000: all found, and few of the control-like rest are called with them
    pair[100:130] = rng.uniform(0.3, 0.6, size=30)
    many = against_control(distance_from_match(pair), distance_from_match(control), fdr=0.05)
    assert many.beyond[100:130].all() and many.beyond[7]
    assert many.beyond.sum() - 31 <= 3


def test_q_is_the_ratio_of_control_calls_to_pair_calls_at_the_threshold():
    # pair 0.9, 0.8, 0.1 against control 0.85, 0.5, 0, 0: calling 0.9 alone expects 3 · 0/4 = 0 false calls (q 0);
    # calling 0.9 and 0.8 expects 3 · 1/4 = 0.75 among 2 (0.375); calling all three 3 · 2/4 = 1.5 among 3 (0.5)
    result = against_control(np.array([0.9, 0.8, 0.1]), np.array([0.85, 0.5, 0.0, 0.0]), fdr=0.05)
    np.testing.assert_allclose(result.exceedance, [0.0, 0.25, 0.5])
    np.testing.assert_allclose(result.q, [0.0, 0.375, 0.5])
    assert result.beyond.tolist() == [True, False, False]
