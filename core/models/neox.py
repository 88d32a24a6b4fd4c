"""GPT-NeoX / Pythia (`GPTNeoXForCausalLM`): LayerNorm with biases, partial rotary, parallel attention + MLP."""

from __future__ import annotations

from typing import Any

from core.models.fields import rope_theta
from core.models.registry import ModelFamily, register


def tl_config(hf_cfg: Any) -> dict[str, Any]:
    from transformer_lens.utilities.hf_utils import get_rotary_pct_from_config

    d_head = hf_cfg.hidden_size // hf_cfg.num_attention_heads
    return {
        "d_model": hf_cfg.hidden_size,
        "d_head": d_head,
        "n_heads": hf_cfg.num_attention_heads,
        "d_mlp": hf_cfg.intermediate_size,
        "n_layers": hf_cfg.num_hidden_layers,
        "n_ctx": hf_cfg.max_position_embeddings,
        "eps": hf_cfg.layer_norm_eps,
        "d_vocab": hf_cfg.vocab_size,
        "act_fn": hf_cfg.hidden_act,
        "normalization_type": "LN",
        "parallel_attn_mlp": getattr(hf_cfg, "use_parallel_residual", True),
        "positional_embedding_type": "rotary",
        "rotary_dim": round(get_rotary_pct_from_config(hf_cfg) * d_head),
        "rotary_adjacent_pairs": False,
        "rotary_base": rope_theta(hf_cfg),
    }


def convert(hf_model: Any, cfg: Any) -> dict[str, Any]:
    from transformer_lens.pretrained.weight_conversions.neox import convert_neox_weights

    return convert_neox_weights(hf_model, cfg)


NEOX = register(ModelFamily("GPT-NeoX / Pythia", ("GPTNeoXForCausalLM",), tl_config, convert,
                                hf_layers="gpt_neox.layers", hf_attn_out="attention"))
