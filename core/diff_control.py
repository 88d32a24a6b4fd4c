"""Is a difference the fine-tune's? Each feature's change in a pair set against the same measurement on the pair's
control (issue 22).

A control arm runs the pair's `a` model with an SAE trained on exactly as `b`'s was (continued from a's SAE on a's own
activations, or a second SAE with another seed): whatever separates `a` from the control is what SAE training does
to any SAE, and whatever separates `a` from `b` beyond that is the fine-tune's. For each feature of the pair the
statistic is a distance from its counterpart (1 − the best match's correlation, 1 − the correlation with the
feature of the same index); the control pair's features give the null distribution of the same statistic.

For a feature with statistic s against n control values, `exceedance` = #{control ≥ s} / n: the share of the
control's features at least as changed. The q-value is Benjamini–Hochberg's over those shares, which makes it the
empirical FDR of the target-decoy / SAM kind: calling every feature with a statistic ≥ t "changed" is expected to
call (n_pair / n) · #{control ≥ t} of them by SAE training alone, against #{pair ≥ t} called; q is the smallest such
ratio over the thresholds that call the feature. It is an estimate, not a guarantee (no +1 in the numerator, so a
single feature beyond every control value can be called, at q 0, as a planted change should be). A feature is
*beyond the control* when q ≤ the study's FDR (`diff.fdr`). Identical arms give statistics equal to the control's:
every exceedance is 1 and nothing is called.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def exceedance(stat: np.ndarray, control: np.ndarray) -> np.ndarray:
    """[n] the share of the control's defined values at least as large as each statistic (larger = more changed).
    NaN in (a dead or rare feature) stays NaN out; no control values: all NaN."""
    stat = np.asarray(stat, dtype=np.float64)
    ctrl = np.sort(np.asarray(control, dtype=np.float64)[~np.isnan(control)])
    share = np.full(stat.shape, np.nan)
    if ctrl.size == 0:
        return share
    defined = ~np.isnan(stat)
    share[defined] = (ctrl.size - np.searchsorted(ctrl, stat[defined], side="left")) / ctrl.size
    return share


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values [n] of p-values [n] (NaN ignored and kept): q_(i) = min_{j ≥ i} p_(j) m / j."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    if defined.size == 0:
        return q
    order = defined[np.argsort(p[defined], kind="stable")]
    ranked = p[order] * defined.size / np.arange(1, defined.size + 1)
    q[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return q


@dataclass(frozen=True)
class ControlledChange:
    """Each feature's statistic against the control's distribution of it: the share of the control at least as
    changed, the q-value and whether it is beyond the control at the FDR."""

    stat: np.ndarray  # [n] the feature's distance from its counterpart (NaN: no fate)
    exceedance: np.ndarray  # [n] share of the control's values >= stat (0.0: beyond every one)
    q: np.ndarray  # [n] empirical FDR of calling it (and everything at least as changed) the fine-tune's
    beyond: np.ndarray  # [n] bool: q <= fdr
    n_control: int  # defined control values
    fdr: float


def against_control(stat: np.ndarray, control: np.ndarray, fdr: float) -> ControlledChange:
    """Each feature's `stat` [n] against `control` [m] (the same statistic on the control pair), at false-discovery
    rate `fdr`."""
    share = exceedance(stat, control)
    q = benjamini_hochberg(share)
    n_control = int((~np.isnan(np.asarray(control, dtype=np.float64))).sum())
    return ControlledChange(np.asarray(stat, dtype=np.float64), share, q, np.nan_to_num(q, nan=1.0) <= fdr, n_control,
                            fdr)


def distance_from_match(corr: np.ndarray) -> np.ndarray:
    """The statistic of a fate: 1 − the correlation with the best match (or with the same index), NaN kept."""
    return 1.0 - np.asarray(corr, dtype=np.float64)
