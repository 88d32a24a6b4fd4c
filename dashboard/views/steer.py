"""Steer: add a feature's decoder direction to the model's activations while it writes, and score the effect."""

import numpy as np
import pandas as pd
import streamlit as st

from core import steering
from core.feature_ids import FeatureIdError, parse_arm, parse_feature_ids
from dashboard import charts, data, place, render
from dashboard import state_keys as keys

config = data.require_database()
st.title("Steer")
widths = data.widths()
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

loaded = data.loaded_arm(arm)
norm = data.typical_norm(arm)
rows = [data.query("feature_row", arm, f) for f in features]
max_act = max(float(r.get("max_act") or 0) for r in rows)
st.caption(f"Typical activation norm at `{loaded.hook_name}`: **{norm:.3g}**; max activation of "
           f"{'this feature' if len(features) == 1 else 'these features'} on the corpus: **{max_act:.3g}**. A "
           f"coefficient c adds c × the unit decoder direction, so c ≈ {norm:.3g} is as large as a typical activation.")
limit = float(max(4 * norm, 2 * max_act, 1.0))
coefficient = st.slider("Coefficient", -limit, limit, float(min(norm, limit)), key=keys.STEER_COEFFICIENT)
prompt = st.text_input("Prompt", steering.PAPER_PROMPT, key=keys.STEER_PROMPT)
k1, k2, k3, k4, k5 = st.columns(5)
settings = steering.SamplingSettings(
    temperature=k1.number_input("Temperature", 0.05, 2.0, 1.0, key=keys.STEER_TEMPERATURE),
    top_p=k2.number_input("Top p", 0.05, 1.0, 0.3, key=keys.STEER_TOP_P),
    freq_penalty=k3.number_input("Frequency penalty", 0.0, 2.0, 1.0, key=keys.STEER_PENALTY),
    max_new_tokens=int(k4.number_input("New tokens", 1, 200, 30, key=keys.STEER_TOKENS)),
    seed=int(k5.number_input("Seed", 0, 10**6, 0, key=keys.STEER_SEED)))
tokens = pd.concat([data.query("feature_tokens", arm, f).assign(feature=f) for f in features])
top = tokens[tokens["kind"] == "top"]


def similarity(text: str, top_frame: pd.DataFrame = top) -> float:
    """The paper's measure of `text` against the top tokens in `top_frame` (default: the chosen features')."""
    return steering.semantic_similarity(text, top_frame["token"].tolist(), top_frame["value"].tolist(),
                                        data.embeddings())


coefficients = {f: coefficient for f in features}
other_arm = next((a for a in arms if a != arm), None)
both = other_arm is not None and st.toggle(f"Both models: also steer {other_arm} with the same prompt",
                                           key=keys.STEER_BOTH)
if both:
    match = rows[0].get("match_feature")
    has_match = match is not None and match == match
    other_feature = int(st.number_input(
        f"{other_arm} feature ({'its best match from the model diff' if has_match else 'choose one'})", 0,
        data.d_sae(other_arm) - 1, int(match) if has_match else 0, key=keys.STEER_OTHER_FEATURE))


def show(arm_name: str, loaded_arm, feature_coefficients: dict, top_frame: pd.DataFrame) -> None:
    """Unsteered and steered text side by side with the numbers, for one arm."""
    ids = top_frame["token_id"].astype(int).tolist()
    try:
        with st.spinner(f"Generating {arm_name}: unsteered and steered text with the same seed…"):
            result = steering.compare_steering(loaded_arm, feature_coefficients, prompt, settings)
            shift = steering.next_token_shift(loaded_arm, feature_coefficients, prompt, ids)
    except Exception as err:  # noqa: BLE001 - any generation failure becomes a message, not a traceback
        st.error(f"Generation failed: {err}")
        return
    sims = [similarity(g.text, top_frame) for g in (result.unsteered, result.steered)]
    top_ids = set(ids)
    for col, name, generation, sim in zip(st.columns(2), ("Unsteered", f"Steered (c = {coefficient:.3g})"),
                                          (result.unsteered, result.steered), sims):
        hits = [float(t in top_ids) for t in generation.token_ids]
        col.markdown(f"**{arm_name} · {name}** · similarity to the top tokens **{sim:.3f}** · "
                     f"{int(sum(hits))} of {len(hits)} new tokens among its top tokens (shaded)")
        col.markdown(render.context_html([prompt] + generation.tokens, [0.0] + hits, 1.0), unsafe_allow_html=True)
    st.caption(f"Log-probability of the feature's top tokens at the next position: {shift.set_change:+.3f} nats "
               "with steering.")


if st.button("Generate", type="primary", key=keys.STEER_GO):
    show(arm, loaded, coefficients, top)
    if both:
        other_top = data.query("feature_tokens", other_arm, other_feature)
        show(other_arm, data.loaded_arm(other_arm), {other_feature: coefficient},
             other_top[other_top["kind"] == "top"])

if st.button("Sweep the coefficient (9 values, −2× to +2×)", key=keys.STEER_SWEEP):
    values = np.linspace(-2 * coefficient, 2 * coefficient, 9)
    points = []
    progress = st.progress(0.0, text="sweeping…")
    try:
        for i, c in enumerate(values):
            generation = steering.generate_steered(loaded, {f: float(c) for f in features}, prompt, settings)
            points.append({"coefficient": float(c), "similarity": similarity(generation.text)})
            progress.progress((i + 1) / len(values), text=f"coefficient {c:.3g}")
    except Exception as err:  # noqa: BLE001
        st.error(f"Generation failed: {err}")
        st.stop()
    progress.empty()
    st.plotly_chart(charts.dose_response(pd.DataFrame(points)), key="sweep_chart")
