"""Large vocabularies (issue 24): the divergence and transfer stages' token passes per token on a 256k vocabulary
against a 49k one, at equal width and depth, ratio timed in the same run (target ≤ 2×).

Random Llamas of SmolLM2's shape (30 layers, width 576, 9 heads of which 3 K/V, MLP 1536; the 49,152 vocabulary
is SmolLM2's, 256,000 Gemma's), fp32, each arm of the pair the same model with its own SAE (2304 features at
`blocks.10.hook_resid_pre`: the weights do not change what a pass costs). ROWS × 128 tokens, the stages' batch.
What a 256k vocabulary must cost more is the unembedding: 576 × 256,000 multiply-adds a token against 576 × 49,152
(147M against 28M, beside ~120M for the 30 blocks), so one head pass a token bounds the ratio below by ≈ 1.8
(divergence: a clean pass of each model) and ≈ 2.0 (transfer: 2 clean passes and 6 resumed from block 10, each
through the head). Before the chunked reads (core.chunked_logits) divergence ran one row a batch on 256k (its batch
was LOGIT_BUDGET // (128 × d_vocab)) and the losses held the logits and their log-softmax whole.
Fastest of REPEATS interleaved rounds after a warm-up (bench/timing.py).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.timing import interleaved_times
from core.divergence import corpus_divergence
from core.loading import NO_CENTRING, LoadedArm
from core.models import hooked_transformer_from_hf
from precompute.pair import Pair
from precompute.stages.transfer import PASSES as TRANSFER

VOCABULARIES, HOOK, ROWS, CONTEXT, BATCH, D_SAE, REPEATS = (49_152, 256_000), "blocks.10.hook_resid_pre", 2, 128, 2, 2304, 1


def random_llama(d_vocab: int, layers: int = 30, width: int = 576) -> object:
    """A HookedTransformer of a random Llama of SmolLM2's block with `d_vocab` tokens (the transformers model dropped)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=d_vocab, hidden_size=width, intermediate_size=1536, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, architectures=["LlamaForCausalLM"])
    hf = LlamaForCausalLM(config).eval()
    return hooked_transformer_from_hf(hf, None, NO_CENTRING, "cpu")


def random_sae(d_in: int, seed: int, hook_name: str = HOOK, d_sae: int = D_SAE) -> object:
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae)
    cfg.metadata.hook_name = hook_name
    return StandardSAE(cfg).eval()


def pair_of(model: object, rows: torch.Tensor) -> Pair:
    arms = [LoadedArm(name, model, random_sae(model.cfg.d_model, seed), HOOK, D_SAE, "cpu", NO_CENTRING)
            for seed, name in enumerate(("a", "b"))]
    return Pair(*arms, rows=rows, batch_size=BATCH, threshold=0.8, outlier_factor=10.0,
                progress=lambda desc: (lambda it: it))


def run() -> list[dict]:
    cases, n_tokens = {}, ROWS * (CONTEXT - 1)
    for d_vocab in VOCABULARIES:
        model = random_llama(d_vocab)
        rows = torch.randint(1, d_vocab, (ROWS, CONTEXT), generator=torch.Generator().manual_seed(0))
        rows[:, 0] = 0
        pair = pair_of(model, rows)
        cases[f"divergence, vocabulary {d_vocab:,}"] = (
            lambda pair=pair: corpus_divergence(pair.a, pair.b, pair.rows, np.arange(ROWS), 50, 0.01, BATCH))
        cases[f"transfer, vocabulary {d_vocab:,}"] = lambda pair=pair: TRANSFER.run_whole(pair)
    with torch.inference_mode():
        fastest = {name: min(values) for name, values in interleaved_times(cases, REPEATS).items()}
    out = []
    for stage in ("divergence", "transfer"):
        reference = f"{stage}, vocabulary {VOCABULARIES[0]:,}"
        for d_vocab in VOCABULARIES:
            name = f"{stage}, vocabulary {d_vocab:,}"
            out.append({"name": name, "seconds": fastest[name], "ms_per_token": 1000 * fastest[name] / n_tokens,
                        "reference": reference, "reference_seconds": fastest[reference],
                        "ratio": fastest[name] / fastest[reference], "target_ratio": 2.0})
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    for row in run():
        print(row)
