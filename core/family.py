"""Where a family's features go (Horn & Elliott, seed 004, §4.1 and Figure 2): a base model, two fine-tunes A and
B of it, and their merge; pairs base→A, base→B, A→merge, B→merge, each matched by activation correlation.

Every count reads the pairs' matching (`feature_matches`, one row per feature and direction: its best match in the
other arm, the status, the one-to-one assignment). Best matches can be many-to-one, so each count comes twice:
by best match (the paper's) and by the assignment (one-to-one). The paper's counts:
- base features persisting into either fine-tune (959 in the paper);
- merge features traceable to A or to B (1,210), split into those whose parent emerged during fine-tuning (729)
  and those whose parent persisted from the base (481).
A chain follows one base feature along base→A→merge and base→B→merge. Pure functions over plain arrays: the SQL
lives in core.database.family_queries.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import StudyInputError

NO_FEATURE = -1


@dataclass(frozen=True)
class Family:
    """Four arms of a study: the base, fine-tunes A and B of it, and their merge."""

    base: str
    a: str
    b: str
    merge: str

    @property
    def arms(self) -> tuple[str, str, str, str]:
        return (self.base, self.a, self.b, self.merge)

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """The four (earlier, later) pairs whose matching the family reads."""
        return ((self.base, self.a), (self.base, self.b), (self.a, self.merge), (self.b, self.merge))

    def check(self, study_arms: Iterable[str], study_pairs: Iterable[tuple[str, str]] | None = None) -> "Family":
        """One line naming the arm (or pair) the study lacks."""
        known = list(study_arms)
        for role, arm in zip(("base", "a", "b", "merge"), self.arms):
            if arm not in known:
                raise StudyInputError(f"family {role} arm {arm!r} is not in the study; its arms are "
                                      f"{', '.join(known)}")
        if len(set(self.arms)) < 4:
            raise StudyInputError(f"a family names four different arms (base, a, b, merge), got {self.arms}")
        if study_pairs is not None:
            declared = {tuple(pair) for pair in study_pairs}
            missing = [f"{x} -> {y}" for x, y in self.pairs if (x, y) not in declared]
            if missing:
                raise StudyInputError(f"the family needs the pairs {', '.join(missing)}: declare them as "
                                      "[[pairs]] (a = the earlier model) and run the precompute")
        return self


def find_families(pairs: Sequence[tuple[str, str]]) -> list[Family]:
    """Every family the declared (earlier, later) pairs form: base→A, base→B, A→M, B→M (A declared before B)."""
    declared = [tuple(pair) for pair in pairs]
    later: dict[str, list[str]] = {}
    for x, y in declared:
        later.setdefault(x, []).append(y)
    families = []
    for base, children in later.items():
        for i, a in enumerate(children):
            for b in children[i + 1:]:
                for merge in later.get(a, []):
                    if merge in later.get(b, []) and merge != base:
                        families.append(Family(base, a, b, merge))
    return families


@dataclass(frozen=True)
class MatchSide:
    """One arm's features against another arm's (one direction of a pair's matching), indexed by feature [d_sae]."""

    best: np.ndarray  # int64, best match in the other arm (-1: none)
    best_corr: np.ndarray  # float64, NaN where none
    persist: np.ndarray  # bool, best match at or above the threshold (status "persist")
    live: np.ndarray  # bool, fired often enough to be matched (status neither "dead" nor "rare")
    assigned: np.ndarray  # int64, partner in the one-to-one assignment (-1: none)
    assigned_corr: np.ndarray  # float64

    @property
    def d_sae(self) -> int:
        return len(self.best)

    def partner(self, one_to_one: bool) -> np.ndarray:
        """[d_sae] the partner each feature persists into (-1 where it does not)."""
        if one_to_one:
            return self.assigned
        return np.where(self.persist, self.best, NO_FEATURE)

    def partner_corr(self, one_to_one: bool) -> np.ndarray:
        return np.where(self.partner(one_to_one) >= 0, self.assigned_corr if one_to_one else self.best_corr, np.nan)


def match_side(feature: Sequence[int], match_feature: Sequence[int | None], match_corr: Sequence[float | None],
               status: Sequence[str], assigned_feature: Sequence[int | None],
               assigned_corr: Sequence[float | None], d_sae: int | None = None) -> MatchSide:
    """A MatchSide from the columns of one (arm, match_arm) direction of `feature_matches` (None for NULL)."""
    feature = np.asarray(feature, np.int64)
    size = int(d_sae if d_sae is not None else (feature.max() + 1 if feature.size else 0))

    def column(values: Sequence, fill: float | int, dtype: type) -> np.ndarray:
        out = np.full(size, fill, dtype)
        out[feature] = [fill if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in values]
        return out

    persist, live = np.zeros(size, bool), np.zeros(size, bool)
    persist[feature] = [s == "persist" for s in status]
    live[feature] = [s not in ("dead", "rare") for s in status]
    return MatchSide(column(match_feature, NO_FEATURE, np.int64), column(match_corr, np.nan, np.float64), persist, live,
                     column(assigned_feature, NO_FEATURE, np.int64), column(assigned_corr, np.nan, np.float64))


Sides = Mapping[tuple[str, str], MatchSide]  # (arm, match_arm) -> that arm's features against match_arm's


def _side(sides: Sides, arm: str, other: str) -> MatchSide:
    if (arm, other) not in sides:
        raise StudyInputError(f"no matching of {arm} against {other} in this database: the pair's matching stage "
                              "has not run, or was skipped (arms that share no tokenizer cannot be matched token by "
                              "token); declare the pair and run the precompute")
    return sides[(arm, other)]


@dataclass(frozen=True)
class FamilyCounts:
    """The paper's flow counts, by best match or one-to-one. Shares are of the source arm's d_sae."""

    one_to_one: bool
    d_sae: dict[str, int]
    base_into_a: int  # base features persisting into A
    base_into_b: int
    base_into_either: int  # the paper's 959
    base_into_both: int
    a_from_base: int  # A features whose partner in the base persists
    a_emerged: int  # live A features with none (dead and rare ones are neither)
    b_from_base: int
    b_emerged: int
    merge_from_a: int  # merge features traceable to A
    merge_from_b: int
    merge_traceable: int  # to A or B: the paper's 1,210
    merge_from_both: int
    merge_persisting_from_base: int  # traceable, and a traced parent persisted from the base (481)
    merge_emerged_in_finetuning: int  # traceable, and every traced parent emerged in its fine-tune (729)
    flows: tuple[tuple[str, str, int], ...]  # (source node, target node, count): the Sankey's links


@dataclass(frozen=True)
class Flow:
    """One link of the Sankey: `count` features of `arm` (the ones listed in `features`) go from source to target."""

    source: str
    target: str
    start: str  # the arm the flow leaves (its share is of this arm's features)
    arm: str  # whose features the flow counts: the base's for base -> A, the merge's for A -> merge
    features: np.ndarray  # int64 feature ids of `arm`

    @property
    def count(self) -> int:
        return int(self.features.size)


def family_flows(family: Family, sides: Sides, one_to_one: bool = False) -> dict[str, Any]:
    """Every per-feature mask behind Figure 2 (bool arrays over each arm's features) and the Sankey's flows."""
    base_a, base_b = _side(sides, family.base, family.a), _side(sides, family.base, family.b)
    a_base, b_base = _side(sides, family.a, family.base), _side(sides, family.b, family.base)
    merge_a, merge_b = _side(sides, family.merge, family.a), _side(sides, family.merge, family.b)
    into_a, into_b = base_a.partner(one_to_one) >= 0, base_b.partner(one_to_one) >= 0
    a_came, b_came = a_base.partner(one_to_one) >= 0, b_base.partner(one_to_one) >= 0
    parent_a, parent_b = merge_a.partner(one_to_one), merge_b.partner(one_to_one)
    from_a, from_b = parent_a >= 0, parent_b >= 0
    # A merge feature persists from the base when a parent it is traced to came from the base itself.
    via_a_base = from_a & a_came[np.clip(parent_a, 0, None)]
    via_b_base = from_b & b_came[np.clip(parent_b, 0, None)]
    a, b, m = family.a, family.b, family.merge
    ids = np.flatnonzero
    flows = (Flow(family.base, f"{a} (from base)", family.base, family.base, ids(into_a)),
             Flow(family.base, f"{b} (from base)", family.base, family.base, ids(into_b)),
             Flow(f"{a} (from base)", m, a, m, ids(via_a_base)),
             Flow(f"{a} (emerged)", m, a, m, ids(from_a & ~via_a_base)),
             Flow(f"{b} (from base)", m, b, m, ids(via_b_base)),
             Flow(f"{b} (emerged)", m, b, m, ids(from_b & ~via_b_base)))
    return {"into_a": into_a, "into_b": into_b, "a_came": a_came, "a_emerged": a_base.live & ~a_came,
            "b_came": b_came, "b_emerged": b_base.live & ~b_came, "from_a": from_a, "from_b": from_b,
            "from_base": via_a_base | via_b_base, "flows": flows,
            "d_sae": {family.base: base_a.d_sae, a: a_base.d_sae, b: b_base.d_sae, m: merge_a.d_sae}}


def family_counts(family: Family, sides: Sides, one_to_one: bool = False) -> FamilyCounts:
    """Figure 2's counts from the four pairs' matching."""
    f = family_flows(family, sides, one_to_one)
    traceable = f["from_a"] | f["from_b"]
    return FamilyCounts(
        one_to_one, f["d_sae"], int(f["into_a"].sum()), int(f["into_b"].sum()), int((f["into_a"] | f["into_b"]).sum()),
        int((f["into_a"] & f["into_b"]).sum()), int(f["a_came"].sum()), int(f["a_emerged"].sum()),
        int(f["b_came"].sum()), int(f["b_emerged"].sum()), int(f["from_a"].sum()), int(f["from_b"].sum()),
        int(traceable.sum()), int((f["from_a"] & f["from_b"]).sum()), int(f["from_base"].sum()),
        int((traceable & ~f["from_base"]).sum()), tuple((flow.source, flow.target, flow.count) for flow in f["flows"]))


def chains(family: Family, sides: Sides, one_to_one: bool = False) -> dict[str, np.ndarray]:
    """Per base feature [d_sae_base], its partner along base→A→merge and base→B→merge (-1 / NaN where the chain
    stops): columns base_feature, a_feature, a_corr, a_merge_feature, a_merge_corr, and the same for b."""
    base_a = _side(sides, family.base, family.a)
    out = {"base_feature": np.arange(base_a.d_sae, dtype=np.int64)}
    for arm, name in ((family.a, "a"), (family.b, "b")):
        first = _side(sides, family.base, arm)
        second = _side(sides, arm, family.merge)
        partner, corr = first.partner(one_to_one), first.partner_corr(one_to_one)
        safe = np.clip(partner, 0, None)
        onward = np.where(partner >= 0, second.partner(one_to_one)[safe], NO_FEATURE)
        onward_corr = np.where(onward >= 0, second.partner_corr(one_to_one)[safe], np.nan)
        out.update({f"{name}_feature": partner, f"{name}_corr": corr, f"{name}_merge_feature": onward,
                    f"{name}_merge_corr": onward_corr})
    return out


@dataclass(frozen=True)
class LineageStep:
    arm: str
    feature: int
    partner_arm: str
    partner: int  # -1: no partner at the threshold
    corr: float  # the best match's correlation (NaN: none), shown even below the threshold
    persists: bool


def lineage(family: Family, sides: Sides, arm: str, feature: int, one_to_one: bool = False) -> list[LineageStep]:
    """A feature's path through the family: its partners up to the base and down to the merge, each step from
    the feature it reached (the steps stop where a partner falls below the threshold)."""
    if arm not in family.arms:
        raise StudyInputError(f"arm {arm!r} is not in the family {', '.join(family.arms)}")
    up = {family.merge: (family.a, family.b), family.a: (family.base,), family.b: (family.base,), family.base: ()}
    down = {family.base: (family.a, family.b), family.a: (family.merge,), family.b: (family.merge,), family.merge: ()}
    steps: list[LineageStep] = []

    def walk(current: str, index: int, moves: Mapping[str, tuple[str, ...]]) -> None:
        for other in moves[current]:
            side = _side(sides, current, other)
            partner = int(side.partner(one_to_one)[index])
            corr = side.assigned_corr[index] if one_to_one else side.best_corr[index]
            steps.append(LineageStep(current, index, other, partner, float(corr), partner >= 0))
            if partner >= 0:
                walk(other, partner, moves)

    walk(arm, int(feature), up)
    walk(arm, int(feature), down)
    return steps
