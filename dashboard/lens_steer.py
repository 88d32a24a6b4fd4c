"""Steer the base model with the difference lens's vector (issue 22): the fine-tune's mean direction added at its
site, scaled to the typical activation norm there, beside the unsteered text from the same seed, so a user sees
the fine-tune's direction write text. What changed calls it under the lens."""

from __future__ import annotations

import streamlit as st
import torch

from core import steering
from core.steer_controls import generate_along
from dashboard import live, reads, study
from dashboard import state_keys as keys


def lens_direction(vector: list[float], strength: float, typical_norm: float) -> torch.Tensor:
    """The lens vector [d_model] rescaled to `strength` × the typical activation norm at its site (0: no push)."""
    v = torch.tensor(vector, dtype=torch.float32)
    norm = float(v.norm())
    return v * 0.0 if norm == 0 else v * (strength * typical_norm / norm)


def lens_steer_form(pair: tuple[str, str], hook_name: str, kind: str) -> None:
    arm_a, arm_b = pair
    stored = reads.changed.lens_vector(pair, hook_name, kind)
    if stored is None or not stored[1] > 0:
        return
    vector, norm, typical = stored
    config = study.study_config()
    with st.form("lens_steer"):
        st.markdown(f"**Steer {arm_a} with this direction** at `{hook_name}`: the mean {arm_b} − {arm_a} difference "
                    f"(norm {norm:.3g}, {norm / typical:.2f}× the typical {arm_a} norm {typical:.3g} there), rescaled.")
        c1, c2, c3 = st.columns([2, 5, 1])
        strength = c1.slider("Strength (× typical norm)", 0.0, 4.0, 1.0, 0.25, key=keys.CHANGED_LENS_STRENGTH)
        prompt = c2.text_input("Prompt", config.steering.prompt, key=keys.CHANGED_LENS_PROMPT)
        new_tokens = int(c3.number_input("New tokens", 1, 200, config.steering.max_new_tokens,
                                         key=keys.CHANGED_LENS_TOKENS))
        run = st.form_submit_button("Generate", key=keys.CHANGED_LENS_RUN)
    if not run:
        return
    settings = steering.SamplingSettings(
        temperature=config.steering.temperature, top_p=config.steering.top_p,
        freq_penalty=config.steering.freq_penalty, max_new_tokens=new_tokens, seed=config.seed,
        special_tokens=config.steering.special_tokens)
    arm = live.loaded_arm(arm_a)
    try:
        with st.spinner(f"Generating with {arm_a}…"):
            plain = steering.generate(arm.model, prompt, settings, hf_model=arm.hf_model)
            pushed = _generate_at(arm, hook_name, lens_direction(vector, strength, typical), prompt, settings)
    except ValueError as err:  # an empty prompt, or one too long for the model's context with the new tokens
        st.error(f"{err}.")
        return
    left, right = st.columns(2)
    left.markdown(f"**{arm_a}, unsteered** (seed {settings.seed})")
    left.text(plain.text)
    right.markdown(f"**{arm_a} + {strength:g}× typical norm along the lens** (same seed)")
    right.text(pushed.text)


def _generate_at(arm, hook_name: str, vector: torch.Tensor, prompt: str, settings: steering.SamplingSettings):
    if hook_name == arm.hook_name:
        return generate_along(arm, vector, prompt, settings)
    with steering.steering(arm.model, hook_name, vector, arm.hf_model):
        return steering.generate(arm.model, prompt, settings, hf_model=arm.hf_model)
