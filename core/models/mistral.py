"""Mistral (`MistralForCausalLM`): the Llama block with GQA and a sliding attention window on every layer."""

from __future__ import annotations

from typing import Any

from core.models.fields import rotary_decoder
from core.models.registry import ModelFamily, register


def tl_config(hf_cfg: Any) -> dict[str, Any]:
    fields = rotary_decoder(hf_cfg)
    window = getattr(hf_cfg, "sliding_window", None)
    if window:
        fields.update(use_local_attn=True, window_size=int(window), attn_types=["local"] * hf_cfg.num_hidden_layers)
    return fields


def convert(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.mistral import convert_mistral_weights

    return convert_mistral_weights(hf_model, cfg)


MISTRAL = register(ModelFamily("Mistral", ("MistralForCausalLM",), tl_config, convert))
