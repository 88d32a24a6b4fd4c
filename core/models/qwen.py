"""Qwen 2 / 2.5 (`Qwen2ForCausalLM`: biases on Q, K, V) and Qwen 3 (`Qwen3ForCausalLM`: RMSNorm on Q and K)."""

from __future__ import annotations

from typing import Any

from core.models.fields import rotary_decoder, sliding_windows
from core.models.registry import ModelFamily, register


def qwen2_config(hf_cfg: Any) -> dict[str, Any]:
    return {**rotary_decoder(hf_cfg), **sliding_windows(hf_cfg)}


def qwen3_config(hf_cfg: Any) -> dict[str, Any]:
    return {**rotary_decoder(hf_cfg), **sliding_windows(hf_cfg), "use_qk_norm": True}


def convert_qwen2(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.qwen2 import convert_qwen2_weights

    return convert_qwen2_weights(hf_model, cfg)


def convert_qwen3(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.qwen3 import convert_qwen3_weights

    return convert_qwen3_weights(hf_model, cfg)


QWEN2 = register(ModelFamily("Qwen 2", ("Qwen2ForCausalLM",), qwen2_config, convert_qwen2))
QWEN3 = register(ModelFamily("Qwen 3", ("Qwen3ForCausalLM",), qwen3_config, convert_qwen3))
