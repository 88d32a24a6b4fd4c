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
import pandas as pd


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


DISTANCE_DECIMALS = 5  # correlations are stored as float32: differences below 1e-5 are rounding, not change


def distance_from_match(corr: np.ndarray) -> np.ndarray:
    """The statistic of a fate: 1 − the correlation with the best match (or with the same index), NaN kept, rounded
    to 1e-5 so that float32 noise between two identical pairs does not rank one feature above the other."""
    return np.round(1.0 - np.asarray(corr, dtype=np.float64), DISTANCE_DECIMALS)


FATES = ("persist", "emerge", "disappear")  # dead and rare features have no fate, and no statistic here


def controlled_fates(pair_rows: pd.DataFrame, control_rows: pd.DataFrame, pair: tuple[str, str], control: str,
                     fdr: float, column: str = "match_corr") -> pd.DataFrame:
    """`pair_rows` (arm, feature, status, `column`: the pair (a, b)'s features) with the columns stat, exceedance,
    q, beyond added: a's features set against a's features in the control pair (a, control) (did a feature
    *disappear* more than it does when only the SAE is trained on?), b's against the control arm's features (did
    it *emerge* more?). `column`: match_corr (the best match, the fates) or same_index_corr (feature i against i).
    Dead and rare features, and features whose `column` is undefined, get no statistic (q NaN, beyond False)."""
    arm_a, arm_b = pair
    out = []
    for arm, control_arm in ((arm_a, arm_a), (arm_b, control)):
        rows = pair_rows[pair_rows["arm"] == arm]
        null = control_rows[(control_rows["arm"] == control_arm) & control_rows["status"].isin(FATES)]
        stat = np.where(rows["status"].isin(FATES), distance_from_match(rows[column].astype(float)), np.nan)
        result = against_control(stat, distance_from_match(null[column].astype(float)), fdr)
        out.append(rows.assign(stat=result.stat, exceedance=result.exceedance, q=result.q, beyond=result.beyond))
    return pd.concat(out, ignore_index=True)


def controlled_counts(pair_rows: pd.DataFrame, control_rows: pd.DataFrame, controlled: pd.DataFrame,
                      pair: tuple[str, str], control: str) -> pd.DataFrame:
    """One row per side and fate: arm, status, features (in the pair), control (the same fate's count in the control
    pair: a's features for a's side, the control arm's for b's), beyond (the pair's features of that fate beyond the
    control, from `controlled_fates`)."""
    rows = []
    for arm, control_arm in ((pair[0], pair[0]), (pair[1], control)):
        for status in FATES:
            rows.append({"arm": arm, "status": status,
                         "features": int(((pair_rows["arm"] == arm) & (pair_rows["status"] == status)).sum()),
                         "control": int(((control_rows["arm"] == control_arm)
                                         & (control_rows["status"] == status)).sum()),
                         "beyond": int(((controlled["arm"] == arm) & (controlled["status"] == status)
                                        & controlled["beyond"]).sum())})
    return pd.DataFrame(rows)
