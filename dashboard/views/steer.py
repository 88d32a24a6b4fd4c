"""Steer: add a feature's decoder direction to the model's activations while it writes, and score the effect."""

import numpy as np
import pandas as pd
import streamlit as st

from core import steering
from dashboard import charts, data, render
from dashboard import state_keys as keys

config = data.require_database()
st.title("Steer")
arms = data.arm_names()
params = st.query_params
if keys.STEER_ARM not in st.session_state:  # opened from a feature page: the URL pre-fills arm and feature
    st.session_state[keys.STEER_ARM] = params.get("arm") if params.get("arm") in arms else arms[0]
    st.session_state[keys.STEER_FEATURES] = params.get("feature", "0")

c1, c2 = st.columns([1, 3])
arm = c1.selectbox("Arm", arms, key=keys.STEER_ARM)
features_text = c2.text_input("Feature(s)", key=keys.STEER_FEATURES, help="one id, or several separated by commas")
try:
    features = [int(f) for f in features_text.replace(" ", "").split(",") if f]
except ValueError:
    st.error("Feature ids are whole numbers separated by commas, e.g. `12` or `12, 40`.")
    st.stop()
d_sae = int(data.query("arms").set_index("arm").loc[arm, "d_sae"])
if not features or any(not 0 <= f < d_sae for f in features):
    st.error(f"Give feature ids between 0 and {d_sae - 1}.")
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
top_ids = set(top["token_id"].astype(int))


def highlighted(generation: steering.Generation) -> str:
    """The prompt and the new tokens as HTML; tokens that are among the feature's top tokens shaded."""
    return render.context_html([prompt] + generation.tokens, [0.0] + [float(t in top_ids)
                                                                     for t in generation.token_ids], scale=1.0)


def similarity(text: str) -> float:
    return steering.semantic_similarity(text, top["token"].tolist(), top["value"].tolist(), data.embeddings())


coefficients = {f: coefficient for f in features}
if st.button("Generate", type="primary", key=keys.STEER_GO):
    try:
        with st.spinner("Generating unsteered and steered text with the same seed…"):
            result = steering.compare_steering(loaded, coefficients, prompt, settings)
            shift = steering.next_token_shift(loaded, coefficients, prompt, top["token_id"].astype(int).tolist())
    except Exception as err:  # noqa: BLE001 - any generation failure becomes a message, not a traceback
        st.error(f"Generation failed: {err}")
        st.stop()
    left, right = st.columns(2)
    for col, name, generation in ((left, "Unsteered", result.unsteered), (right, f"Steered (c = {coefficient:.3g})",
                                                                           result.steered)):
        col.markdown(f"**{name}** · similarity to the top tokens **{similarity(generation.text):.3f}**")
        col.markdown(highlighted(generation), unsafe_allow_html=True)
    st.caption(f"Log-probability of the feature's top tokens at the next position: {shift.set_change:+.3f} nats "
               "with steering (tokens in its top tokens are highlighted).")

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
    st.plotly_chart(charts.dose_response(pd.DataFrame(points)), key="sweep_chart")
