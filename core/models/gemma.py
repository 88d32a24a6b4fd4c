"""Gemma 1, 2 and 3 (`GemmaForCausalLM`, `Gemma2ForCausalLM`, `Gemma3ForCausalLM`): embeddings scaled by
√d_model and RMSNorm weights offset by 1 (both done by TransformerLens's converter), GELU-tanh gated MLP, tied
unembedding. Gemma 2 adds norms after attention and MLP, alternating local/global layers, attention scaled by
`query_pre_attn_scalar` and soft-capped attention scores and logits; Gemma 3 adds Q/K norms and a second rotary
base for local layers.

TransformerLens knows Gemma configs only by official hub name, so the fields are read from the config here."""

from __future__ import annotations

import math
from typing import Any

from core.models.fields import rope_theta, rotary_decoder, sliding_windows
from core.models.registry import ModelFamily, register


def gemma_config(hf_cfg: Any) -> dict[str, Any]:
    # transformers' Gemma MLP uses `hidden_act`, even where an old config.json also names a `hidden_activation`.
    return {**rotary_decoder(hf_cfg), "act_fn": hf_cfg.hidden_act}


def gemma2_config(hf_cfg: Any) -> dict[str, Any]:
    # Gemma 2 and 3 use `hidden_activation`, whatever `hidden_act` a config.json may carry beside it.
    fields = {**rotary_decoder(hf_cfg), "act_fn": hf_cfg.hidden_activation, **sliding_windows(hf_cfg),
              "use_normalization_before_and_after": True,
              "attn_scale": math.sqrt(hf_cfg.query_pre_attn_scalar)}
    if getattr(hf_cfg, "attn_logit_softcapping", None):
        fields["attn_scores_soft_cap"] = float(hf_cfg.attn_logit_softcapping)
    if getattr(hf_cfg, "final_logit_softcapping", None):
        fields["output_logits_soft_cap"] = float(hf_cfg.final_logit_softcapping)
    return fields


def gemma3_config(hf_cfg: Any) -> dict[str, Any]:
    return {**gemma2_config(hf_cfg), "use_qk_norm": True,
            "rotary_base": rope_theta(hf_cfg, "full_attention"),
            "rotary_base_local": rope_theta(hf_cfg, "sliding_attention")}


def convert(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    return convert_gemma_weights(hf_model, cfg)


GEMMA = register(ModelFamily("Gemma", ("GemmaForCausalLM",), gemma_config, convert))
# Gemma 2 and 3 normalise what attention and the MLP write before adding it to the residual stream, and
# TransformerLens's hook_attn_out / hook_mlp_out hold it after that norm (what is added); Gemma 1's
# `post_attention_layernorm` is instead the MLP's input norm, so Gemma 1 keeps the default modules.
POST_NORMS = {"hf_attn_out": "post_attention_layernorm", "hf_mlp_out": "post_feedforward_layernorm"}
GEMMA2 = register(ModelFamily("Gemma 2", ("Gemma2ForCausalLM",), gemma2_config, convert, **POST_NORMS))
GEMMA3 = register(ModelFamily("Gemma 3", ("Gemma3ForCausalLM",), gemma3_config, convert, **POST_NORMS))
