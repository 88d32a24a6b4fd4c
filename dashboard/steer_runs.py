"""The Steer page's runs: one arm's unsteered / steered pair and a coefficient sweep, as plain results that live in
session state (a rerun, another click, keeps them), and how each is drawn."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core import steering
from core.config import SteeringConfig
from core.steer_scores import meaning_scores, perplexity
from dashboard import charts, reads, render
from dashboard import state_keys as keys
from dashboard.steer_control import ControlRun, control_verdict, run_control

SWEEP_POINTS = 9  # −2c … +2c
MEASURE_NAMES = {"sentence": "in meaning (sentence encoder)", "glove": "by word vectors (GloVe mean)"}
TARGET_WORDS = {"decoder": "top tokens", "fired": "most-fired tokens"}  # core.steer_scores.TARGETS, in a title


@dataclass(frozen=True)
class TopTokens:
    """What a feature set's texts are scored and shaded against: each feature's tokens under the study's candidate
    rule (`queries.steering_targets`): its top logit-lens tokens (decoder projection) or those it fires on most."""

    tokens: list[str]
    values: list[float]
    ids: list[int]
    targets: tuple[str, ...] = ("decoder",)  # which lists they are (core.steer_scores.TARGETS)

    @classmethod
    def of(cls, frame: pd.DataFrame) -> TopTokens:
        """From `steering_targets` rows (target, token_id, token, value), or `feature_tokens` rows (kind 'top')."""
        if "kind" in frame.columns:
            frame, targets = frame[frame["kind"] == "top"], ("decoder",)
        else:
            targets = tuple(sorted(set(frame["target"]))) or ("decoder",)
        return cls(frame["token"].tolist(), frame["value"].astype(float).tolist(),
                   frame["token_id"].astype(int).tolist(), targets)

    @property
    def words(self) -> str:
        """'top tokens', 'most-fired tokens', or both: what a title calls them."""
        return " and ".join(TARGET_WORDS[t] for t in self.targets).replace("tokens and ", "and ")

    def scores(self, texts: list[str], measure: str, kv: Any) -> list[float]:
        """Each text's closeness to these top tokens by `measure` (core.steer_scores); kv: GloVe, for "glove"."""
        return meaning_scores(texts, self.tokens, self.values, measure, kv)

    def hits(self, token_ids: list[int]) -> list[float]:
        """1.0 for each new token among the top tokens (shaded), else 0.0."""
        top = set(self.ids)
        return [float(t in top) for t in token_ids]


@dataclass(frozen=True)
class ArmRun:
    """One arm steered: unsteered and steered generations with the same seed, their scores, the next-token shift."""

    arm: str
    coefficients: dict[int, float]
    prompt: str
    settings: steering.SamplingSettings
    comparison: steering.SteeringComparison
    similarity: tuple[float, float]  # unsteered, steered: against this arm's own feature's top tokens
    perplexity: tuple[float, float]  # unsteered, steered: under the unsteered model (fluency)
    hits: tuple[list[float], list[float]]
    set_change: float  # nats: log-probability of the top tokens at the next position, steered − unsteered
    note: str = ""  # how this arm's feature was chosen
    measure: str = "sentence"  # how `similarity` was scored (core.steer_scores.MEASURES)
    words: str = "top tokens"  # what `similarity` was scored against (TopTokens.words)
    control: ControlRun | None = None  # the same push along a random direction, when asked for


def run_arm(loaded: Any, coefficients: dict[int, float], prompt: str, settings: steering.SamplingSettings,
            top: TopTokens, measure: str, kv: Any, note: str = "", control_seed: int | None = None) -> ArmRun:
    """control_seed: the study's seed, to add the random control (dashboard.steer_control); None: none."""
    comparison = steering.compare_steering(loaded, coefficients, prompt, settings)
    shift = steering.next_token_shift(loaded, coefficients, prompt, top.ids)
    pair = (comparison.unsteered, comparison.steered)
    control = (None if control_seed is None
               else run_control(loaded, coefficients, prompt, settings, top, measure, kv, control_seed))
    return ArmRun(loaded.name, dict(coefficients), prompt, settings, comparison,
                  tuple(top.scores([g.text for g in pair], measure, kv)),
                  tuple(perplexity(loaded.model, g.prompt_ids, g.token_ids) for g in pair),
                  tuple(top.hits(g.token_ids) for g in pair), shift.set_change, note, measure, top.words, control)


def _similarity(value: float) -> str:
    """The score in bold, or why there is none (NaN: nothing in the text, or the top tokens, to compare)."""
    return f"**{value:.3f}**" if value == value else "**—** (nothing to score)"


def _perplexity(value: float) -> str:
    return f"perplexity **{value:.3g}**" if value == value else "perplexity **—**"


def show_arm_run(run: ArmRun) -> None:
    features = ", ".join(f"#{f}" for f in run.coefficients)
    c = next(iter(run.coefficients.values()))
    made = run.settings
    st.caption(f"{run.note + ' ' if run.note else ''}Seed {made.seed}, {made.max_new_tokens} new tokens, temperature "
               f"{made.temperature:g}, top p {made.top_p:g}, frequency penalty {made.freq_penalty:g}.")
    names = ["Unsteered", f"Steered ({features}, c = {c:g})"]
    texts = [(run.comparison.unsteered, run.similarity[0], run.perplexity[0], run.hits[0]),
             (run.comparison.steered, run.similarity[1], run.perplexity[1], run.hits[1])]
    if run.control is not None:
        names.append(f"Random direction (seed {run.control.seed}, norm {run.control.norm:.3g})")
        texts.append((run.control.generation, run.control.similarity, run.control.perplexity, run.control.hits))
    for col, name, (generation, sim, ppl, hits) in zip(st.columns(len(names)), names, texts):
        col.markdown(f"**{run.arm} · {name}** · similarity to the {run.words} {_similarity(sim)} · "
                     f"{_perplexity(ppl)} · {int(sum(hits))} of {len(hits)} new tokens among its {run.words} (shaded)")
        col.markdown(render.context_html([run.prompt] + generation.tokens, [0.0] + hits, 1.0), unsafe_allow_html=True)
    control = "" if run.control is None else (
        " Random control: the same push (its norm, prompt, seed and settings) along random direction 0 of "
        f"{features} drawn from the study's seed, as in Table 1. " + control_verdict(run.similarity[1],
                                                                                     run.control.similarity))
    st.caption(f"Similarity {MEASURE_NAMES[run.measure]}; perplexity of each text under the unsteered model (higher: "
               f"less fluent). Log-probability of the feature's {run.words} at the next position: "
               f"{run.set_change:+.3f} nats with steering.{control}")


@dataclass(frozen=True)
class SweepPoint:
    coefficient: float
    text: str
    tokens: list[str]
    hits: list[float]
    similarity: float
    perplexity: float  # of the text under the unsteered model


@dataclass
class Sweep:
    """A coefficient sweep, run one coefficient per script run so that Stop (or any click) lands between two
    generations; what finished is kept. `state`: running, done, stopped, failed."""

    arm: str
    features: list[int]
    prompt: str
    settings: steering.SamplingSettings
    top: TopTokens
    values: list[float]
    points: list[SweepPoint] = field(default_factory=list)
    state: str = "running"
    error: str = ""
    measure: str = "sentence"

    @classmethod
    def start(cls, arm: str, features: list[int], coefficient: float, prompt: str,
              settings: steering.SamplingSettings, top: TopTokens, measure: str = "sentence") -> Sweep:
        values = np.linspace(-2 * coefficient, 2 * coefficient, SWEEP_POINTS).tolist()
        return cls(arm, list(features), prompt, settings, top, values, measure=measure)

    def step(self, loaded: Any, kv: Any) -> None:
        """Generate the next coefficient's text; the last one marks the sweep done."""
        c = self.values[len(self.points)]
        try:
            generation = steering.generate_steered(loaded, {f: c for f in self.features}, self.prompt, self.settings)
            similarity = self.top.scores([generation.text], self.measure, kv)[0]
            fluency = perplexity(loaded.model, generation.prompt_ids, generation.token_ids)  # the unsteered model
        except Exception as err:  # noqa: BLE001 - a failed generation ends the sweep with its reason, kept points stay
            self.state, self.error = "failed", str(err)
            return
        self.points.append(SweepPoint(c, generation.text, generation.tokens, self.top.hits(generation.token_ids),
                                      similarity, fluency))
        if len(self.points) == len(self.values):
            self.state = "done"


def show_sweep(sweep: Sweep) -> None:
    done, total = len(sweep.points), len(sweep.values)
    what = f"{sweep.arm} #{', #'.join(map(str, sweep.features))}, {sweep.settings.max_new_tokens} new tokens"
    if sweep.state == "running":
        st.progress(done / total, text=f"Sweeping {what}: {done} of {total} coefficients done…")
    elif sweep.state == "stopped":
        st.warning(f"Sweep stopped on request after {done} of {total} coefficients ({what}); the finished ones "
                   "are below.")
    elif sweep.state == "failed":
        st.error(f"Generation failed at coefficient {sweep.values[done]:.3g}: {sweep.error}. The finished ones "
                 "are below.")
    else:
        st.caption(f"Sweep of {what}: {total} coefficients; similarity {MEASURE_NAMES[sweep.measure]}, perplexity "
                   "under the unsteered model.")
    if not sweep.points:
        return
    frame = pd.DataFrame([{"coefficient": p.coefficient, "similarity": p.similarity, "perplexity": p.perplexity}
                          for p in sweep.points])
    st.plotly_chart(charts.dose_response(frame), key="sweep_chart")
    for point in sweep.points:
        st.markdown(f"**c = {point.coefficient:.3g}** · similarity {_similarity(point.similarity)} · "
                    f"{_perplexity(point.perplexity)} · {int(sum(point.hits))} of {len(point.hits)} new tokens "
                    f"among the {sweep.top.words}")
        st.markdown(render.context_html([sweep.prompt] + point.tokens, [0.0] + point.hits, 1.0),
                    unsafe_allow_html=True)


def scale_caption(hook_name: str, norm: tuple[float, int] | None, W_dec: Any, max_acts: dict[int, float],
                  coefficient: float, config_path: str) -> str:
    """What a coefficient means here: the stored typical activation norm, the unit direction(s) it multiplies
    (with each row's own norm), and the norm of the vector added, beside the largest one a feature writes itself."""
    features = list(max_acts)
    row_norms = {f: float(W_dec[f].norm()) for f in features}
    added = abs(coefficient) * float(steering.steering_vector(W_dec, {f: 1.0 for f in features}).norm())
    strongest = max(max_acts[f] * row_norms[f] for f in features)
    one = len(features) == 1
    scale = (f"Typical activation norm at `{hook_name}`: **{norm[0]:.4g}** (median over the {norm[1]:,} tokens of "
             "the precompute's quality stage)" if norm else "Typical activation norm: not stored in this database "
             f"(re-run `python -m precompute run --config {config_path}`)")
    rows = ", ".join(f"‖W_dec[{f}]‖ = {n:.3g}" for f, n in row_norms.items())
    ratio = f", {added / norm[0]:.2g}× the typical activation" if norm and norm[0] > 0 else ""
    directions = "the unit decoder direction" if one else "the sum of the unit decoder directions"
    acts = ", ".join(f"{a:.3g}" for a in max_acts.values())
    return (f"{scale}. A coefficient c adds c × {directions} W_dec[f] / ‖W_dec[f]‖ (the paper's SAE has unit "
            f"rows; here {rows}): c = {coefficient:g} adds a vector of norm **{added:.3g}**{ratio}. At "
            f"{'its' if one else 'their'} max activation on the corpus ({acts}) "
            f"{'the feature writes' if one else 'the strongest writes'} a vector of norm **{strongest:.3g}** "
            "(max activation × ‖W_dec[f]‖).")


def table1_differences(steer: SteeringConfig, coefficient: float, prompt: str,
                       settings: steering.SamplingSettings, measure: str | None = None) -> list[str]:
    """The settings of this page that differ from Table 1's (`precompute steer-eval`, the config's [steering])."""
    pairs = {"coefficient": (coefficient, steer.coefficient), "new tokens": (settings.max_new_tokens,
                                                                             steer.max_new_tokens),
             "temperature": (settings.temperature, steer.temperature), "top p": (settings.top_p, steer.top_p),
             "frequency penalty": (settings.freq_penalty, steer.freq_penalty), "prompt": (prompt, steer.prompt),
             "measure": (measure or steer.measure, steer.measure),
             "special tokens": ("drawn" if settings.special_tokens else "never drawn",
                                "drawn" if steer.special_tokens else "never drawn")}
    return [f"{name} {here!r} (Table 1: {there!r})" if isinstance(here, str)
            else f"{name} {here:g} (Table 1: {there:g})" for name, (here, there) in pairs.items() if here != there]


def other_arm_plan(arm: str, other_arm: str, features: list[int], rows: list[dict], coefficient: float,
                   threshold: float) -> tuple[dict[int, float] | None, str]:
    """What "both models" steers in the other arm: each chosen feature's persisting match (the model diff's
    status 'persist'), or, when one has none, nothing unless the user picks a feature by hand. Returns the other
    arm's coefficients (None: not steered) and a line that says how its feature was chosen."""
    matches, missing = {}, []
    for feature, row in zip(features, rows):
        match, corr, status = row.get("match_feature"), row.get("match_corr"), row.get("diff_status")
        if status == "persist" and match is not None and match == match:
            matches[feature] = (int(match), float(corr))
        elif status is None or status != status:
            missing.append(f"{arm} #{feature}: the model diff has no result for it")
        elif match is None or match != match:
            missing.append(f"{arm} #{feature} has no match in {other_arm} at all")
        else:
            missing.append(f"{arm} #{feature} has no persisting match in {other_arm}: its best match, {other_arm} "
                           f"#{int(match)}, correlates {float(corr):.3f}, below the threshold {threshold:g}")
    if not missing:
        note = "; ".join(f"{other_arm} #{m} is the persisting match of {arm} #{f} (activation correlation {c:.3f})"
                         for f, (m, c) in matches.items()) + "."
        st.caption(note + " Each arm's text is scored against its own feature's tokens, by the study's rule, as in "
                          "Table 1.")
        return {m: coefficient for m, _ in matches.values()}, note
    st.info(". ".join(missing) + f". Steering {other_arm} with a feature that is not a match would not test the same "
            f"feature, so {other_arm} is not steered unless you pick one of its features below.")
    picked = st.number_input(f"{other_arm} feature to steer anyway (chosen by hand, not a match)", 0,
                             reads.study.d_sae(other_arm) - 1, value=None, key=keys.STEER_OTHER_FEATURE)
    if picked is None:
        return None, ""
    chosen = ", ".join(f"{arm} #{f}" for f in features)
    return {int(picked): coefficient}, f"{other_arm} #{int(picked)} was chosen by hand: it is not a match of {chosen}."
