"""Llama (`LlamaForCausalLM`: Llama 2 and 3, SmolLM, SmolLM2): RMSNorm, rotary, gated SiLU MLP, often GQA and
(small models) tied embeddings, which the converter reads through `lm_head`, tied or not."""

from __future__ import annotations

from typing import Any

from core.models.fields import rope_scaling_type, rotary_decoder
from core.models.registry import ModelFamily, register


def tl_config(hf_cfg: Any) -> dict[str, Any]:
    fields = rotary_decoder(hf_cfg, rope_types=("default", "llama3"))
    if rope_scaling_type(hf_cfg) == "llama3":  # Llama 3.1+: NTK-by-parts frequencies
        params = getattr(hf_cfg, "rope_parameters", None) or hf_cfg.rope_scaling
        fields.update(use_NTK_by_parts_rope=True,
                      NTK_original_ctx_len=params.get("original_max_position_embeddings", hf_cfg.max_position_embeddings),
                      NTK_by_parts_low_freq_factor=params.get("low_freq_factor", 1.0),
                      NTK_by_parts_high_freq_factor=params.get("high_freq_factor", 4.0),
                      NTK_by_parts_factor=params.get("factor", 1.0))
    return fields


def convert(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    return convert_llama_weights(hf_model, cfg)


LLAMA = register(ModelFamily("Llama", ("LlamaForCausalLM",), tl_config, convert))
