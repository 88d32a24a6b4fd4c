"""Tiny random models of every registered family, from a `transformers` config (well under a second each)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

VOCAB = 96
# Shared sizes: 2 layers, width 32, 4 heads of 8 (2 K/V heads where the family has grouped queries).
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)

TINY_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "GPT2LMHeadModel": ("GPT2Config", dict(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=4, n_positions=64,
                                           bos_token_id=1, eos_token_id=2)),
    "GPTNeoXForCausalLM": ("GPTNeoXConfig", dict(_DECODER, rope_parameters={"rope_theta": 10000.0,
                                                                            "partial_rotary_factor": 0.5,
                                                                            "rope_type": "default"})),
    "LlamaForCausalLM": ("LlamaConfig", dict(_DECODER, num_key_value_heads=2, tie_word_embeddings=True)),
    "MistralForCausalLM": ("MistralConfig", dict(_DECODER, num_key_value_heads=2, head_dim=8, sliding_window=8)),
    "Qwen2ForCausalLM": ("Qwen2Config", dict(_DECODER, num_key_value_heads=2)),
    "Qwen3ForCausalLM": ("Qwen3Config", dict(_DECODER, num_key_value_heads=2, head_dim=8)),
    "GemmaForCausalLM": ("GemmaConfig", dict(_DECODER, num_key_value_heads=1, head_dim=8)),
    "Gemma2ForCausalLM": ("Gemma2Config", dict(_DECODER, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=16,
                                               sliding_window=8, attn_logit_softcapping=5.0,
                                               final_logit_softcapping=3.0)),
    "Gemma3ForCausalLM": ("Gemma3TextConfig", dict(_DECODER, num_key_value_heads=2, head_dim=8,
                                                   query_pre_attn_scalar=8, sliding_window=8,
                                                   layer_types=["sliding_attention", "full_attention"])),
}


def tiny_hf_model(architecture: str, seed: int = 0, vocab_size: int = VOCAB) -> Any:
    """A randomly initialised `transformers` model of `architecture`, eval mode, fp32. Weights are drawn with
    a larger spread than the default init (and norms away from 1) so that a wrong conversion shows."""
    import transformers

    config_class, fields = TINY_CONFIGS[architecture]
    config = getattr(transformers, config_class)(**{**fields, "vocab_size": vocab_size}, architectures=[architecture])
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:  # norm weights and biases: not all ones / zeros
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
            else:
                param.normal_(0, 0.15, generator=generator)
    return model


class Bigram(torch.nn.Module):
    """logits of the next token = a row of `table` [V, V] picked by the current token (a model whose losses are by
    hand), with transformers' causal-LM call: forward(input_ids, labels) -> .logits, .loss."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())

    def forward(self, input_ids, labels=None):
        logits = self.table[input_ids]
        loss = None
        if labels is not None:  # transformers' causal-LM loss: shift, ignore -100
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, self.table.shape[0]),
                                                     labels[:, 1:].reshape(-1), ignore_index=-100)
        return SimpleNamespace(logits=logits, loss=loss)
