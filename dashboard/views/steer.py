"""Steer: add a feature's decoder direction to the model's activations while it writes, and score the effect."""

import streamlit as st

from core import steering
from core.feature_ids import FeatureIdError, parse_arm, parse_feature_ids
from core.steer_scores import TARGETS
from dashboard import data, live, place, reads, study
from dashboard import state_keys as keys
from dashboard.steer_control import control_is_cheap, table1_lines
from dashboard.steer_runs import (MEASURE_NAMES, SWEEP_POINTS, Sweep, TopTokens, other_arm_plan, run_arm,
                                  scale_caption, show_arm_run, show_sweep, table1_differences)

config = data.require_database()
st.title("Steer")
widths = reads.study.widths()
arms = list(widths)
fields = [place.Field(keys.STEER_ARM, "arm", arms[0], lambda text, _: parse_arm(text, arms), always=True),
          place.Field(keys.STEER_FEATURES, "feature", "0", always=True,  # "12, 40": the ids as the box shows them
                      parse=lambda text, chosen: ", ".join(map(str, parse_feature_ids(
                          text, chosen[keys.STEER_ARM], widths[chosen[keys.STEER_ARM]]))))]
place.restore_or_stop("steer", fields)  # opened from a feature page: the URL fills in arm and feature

c1, c2 = st.columns([1, 3])
arm = c1.selectbox("Arm", arms, key=keys.STEER_ARM)
features_text = c2.text_input("Feature(s)", key=keys.STEER_FEATURES, help="one id, or several separated by commas")
place.remember("steer", fields)
try:
    features = parse_feature_ids(features_text, arm, widths[arm])
except FeatureIdError as err:
    st.error(str(err))
    st.stop()


def require_steerable(name: str) -> None:
    """Stop the page with one line when the arm's model cannot load or its SAE is not the database's."""
    try:
        problem = live.sae_mismatch(name)
    except Exception as err:  # noqa: BLE001 - a model or SAE that cannot be loaded is one line, not a traceback
        problem = f"The model or SAE of {name} cannot be loaded: {err}"
    if problem is not None:
        st.error(problem)
        st.stop()


require_steerable(arm)

loaded = live.loaded_arm(arm)
steer = config.steering
rows = [reads.features.feature_row(arm, f) for f in features]
rule = config.medical_vocabulary.candidates  # texts are scored against what it read (core.steer_scores)
top = TopTokens.of(reads.steering.steering_targets(arm, rule, tuple(features)))
norm = reads.study.typical_norm(arm)
W_dec = loaded.sae.W_dec.detach()
max_acts = {f: float(r.get("max_act") or 0) for f, r in zip(features, rows)}
strongest = max(a * float(W_dec[f].norm()) for f, a in max_acts.items())  # the largest vector a feature writes
limit = max(4 * (norm[0] if norm else 0), 2 * strongest, 2 * abs(steer.coefficient), 1.0)
limit = float(-(-limit // 10) * 10) if limit > 10 else limit  # a round bound
for key in (keys.STEER_COEFFICIENT, keys.STEER_COEFFICIENT_SLIDER):  # two widgets, one value: set here, once
    place.change({key: place.kept(key, float(steer.coefficient))})
    place.clamp(key, -limit, limit)  # another arm may have a smaller range

n1, n2 = st.columns([1, 3])
coefficient = float(n1.number_input(
    "Coefficient", -limit, limit, step=1.0, key=keys.STEER_COEFFICIENT, help="type a value, or drag",
    on_change=place.mirror, args=(keys.STEER_COEFFICIENT, keys.STEER_COEFFICIENT_SLIDER)))
n2.slider("Coefficient (drag)", -limit, limit, key=keys.STEER_COEFFICIENT_SLIDER, label_visibility="hidden",
          on_change=place.mirror, args=(keys.STEER_COEFFICIENT_SLIDER, keys.STEER_COEFFICIENT))
st.caption(scale_caption(loaded.hook_name, norm, W_dec, max_acts, coefficient, study.config_path()))

prompt = st.text_input("Prompt", steer.prompt, key=keys.STEER_PROMPT)
k1, k2, k3, k4, k5 = st.columns(5)
settings = steering.SamplingSettings(
    temperature=k1.number_input("Temperature", 0.0, 2.0, float(steer.temperature), key=keys.STEER_TEMPERATURE),
    top_p=k2.number_input("Top p", 0.05, 1.0, float(steer.top_p), key=keys.STEER_TOP_P),
    freq_penalty=k3.number_input("Frequency penalty", 0.0, 2.0, float(steer.freq_penalty), key=keys.STEER_PENALTY),
    max_new_tokens=int(k4.number_input("New tokens", 1, 200, steer.max_new_tokens, key=keys.STEER_TOKENS)),
    seed=int(k5.number_input("Seed", 0, 10**6, config.seed, key=keys.STEER_SEED)),
    special_tokens=st.checkbox("Special tokens may be drawn", steer.special_tokens, key=keys.STEER_SPECIAL,
                               help="EOS, BOS and chat markers. Off: a continuation stays prose (a fine-tune on "
                                    "packed short documents learns to end them). `[steering] special_tokens` sets "
                                    "the default and Table 1's."))
measure = st.radio("Score the texts", list(MEASURE_NAMES), horizontal=True, key=keys.STEER_MEASURE,
                   index=list(MEASURE_NAMES).index(steer.measure), format_func=MEASURE_NAMES.get,
                   help="in meaning: a sentence encoder (all-MiniLM-L6-v2) compares the text with the top tokens "
                        "joined; by word vectors: the mean GloVe vector of the text's words against the weighted "
                        "top words (near 0.97 for any English text against function-word tokens)")
kv = live.embeddings() if measure == "glove" else None  # only the GloVe measure needs the word vectors
differences = table1_differences(steer, coefficient, prompt, settings, measure)
st.caption("Table 1 (`precompute steer-eval`) uses the config's [steering] settings, seeds "
           f"{config.seed}–{config.seed + steer.samples - 1}. " + (
               "Here: " + "; ".join(differences) + "." if differences else "These are the same.")
           + f" Texts are scored against the {top.words}: what the study's candidate rule (`{rule}`) read.")
stored = reads.steering.steering_results(arm, tuple(features))
if not stored.empty:
    st.caption("Table 1 stored: " + " ".join(table1_lines(stored, TARGETS)))

# The other arm of `arm`'s first declared pair: the pair whose matches the features view (`rows`) carries.
first_pair = reads.pairs.first_pair(arm)
other_arm = (next(a for a in first_pair if a != arm) if first_pair
             else next((a for a in arms if a != arm), None))
both = other_arm is not None and st.toggle(f"Both models: also steer {other_arm} with its matching feature",
                                           key=keys.STEER_BOTH)
other_coefficients, other_note = None, ""
if both:
    other_coefficients, other_note = other_arm_plan(arm, other_arm, features, rows, coefficient,
                                                    config.diff.match_threshold)
    if other_coefficients is not None:
        require_steerable(other_arm)

control = st.checkbox("Random control", control_is_cheap(loaded, steer.random_directions), key=keys.STEER_RANDOM,
                      help="also steer along a random direction of the same norm (seeded by the study's seed, as "
                           "Table 1's first), scored against the same tokens: does the feature beat a random push?")
seed = config.seed if control else None
if st.button("Generate", type="primary", key=keys.STEER_GO):
    try:
        with st.spinner(f"Generating {arm}: unsteered and steered text with the same seed…"):
            runs = [run_arm(loaded, {f: coefficient for f in features}, prompt, settings, top, measure, kv,
                            control_seed=seed)]
        if other_coefficients is not None:
            other_top = TopTokens.of(reads.steering.steering_targets(other_arm, rule, tuple(other_coefficients)))
            with st.spinner(f"Generating {other_arm}…"):
                runs.append(run_arm(live.loaded_arm(other_arm), other_coefficients, prompt, settings, other_top,
                                    measure, kv, other_note, seed))
        place.keep(keys.STEER_RESULT, runs)
    except Exception as err:  # noqa: BLE001 - any generation failure becomes a message, not a traceback
        st.error(f"Generation failed: {err}")
for run in place.kept(keys.STEER_RESULT, []):
    show_arm_run(run)

st.divider()
sweep = place.kept(keys.STEER_SWEEP_RESULT)
s1, s2, _ = st.columns([2, 1, 3])
if s1.button(f"Sweep the coefficient ({SWEEP_POINTS} values, −2c to +2c)", key=keys.STEER_SWEEP):
    sweep = place.keep(keys.STEER_SWEEP_RESULT, Sweep.start(arm, features, coefficient, prompt, settings, top,
                                                            measure))
if sweep is not None and sweep.state == "running":  # a callback: the run that follows draws no Stop button
    s2.button("Stop", key=keys.STEER_STOP, on_click=setattr, args=(sweep, "state", "stopped"))
if sweep is not None:
    show_sweep(sweep)
    if sweep.state == "running":  # one coefficient per run: a click in between (Stop or any other) is handled
        sweep.step(live.loaded_arm(sweep.arm), live.embeddings() if sweep.measure == "glove" else None)
        st.rerun()
