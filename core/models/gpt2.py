"""GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, tied unembedding without a bias."""

from __future__ import annotations

from typing import Any

import torch

from core.models.registry import ModelFamily, register


def tl_config(hf_cfg: Any) -> dict[str, Any]:
    # Read from the config transformers writes today: TransformerLens's own converter wants `n_ctx`, which
    # configs saved by transformers 5 no longer have.
    return {
        "d_model": hf_cfg.n_embd,
        "d_head": hf_cfg.n_embd // hf_cfg.n_head,
        "n_heads": hf_cfg.n_head,
        "d_mlp": hf_cfg.n_inner or 4 * hf_cfg.n_embd,
        "n_layers": hf_cfg.n_layer,
        "n_ctx": hf_cfg.n_positions,
        "eps": hf_cfg.layer_norm_epsilon,
        "d_vocab": hf_cfg.vocab_size,
        "act_fn": hf_cfg.activation_function,
        "normalization_type": "LN",
        "use_attn_scale": getattr(hf_cfg, "scale_attn_weights", True),
        "scale_attn_by_inverse_layer_idx": hf_cfg.scale_attn_by_inverse_layer_idx,
    }


def convert(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    state_dict = convert_gpt2_weights(hf_model, cfg)
    state_dict.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))  # GPT-2 has no unembedding bias
    return state_dict


GPT2 = register(ModelFamily("GPT-2", ("GPT2LMHeadModel",), tl_config, convert, hf_layers="transformer.h",
                                hf_attn_out="attn"))
