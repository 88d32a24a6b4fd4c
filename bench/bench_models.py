"""HookedTransformer-by-converter (what `core.models` builds) against TransformerLens's TransformerBridge, on a
small random Llama (SmolLM2's block: RMSNorm, rotary, GQA, tied embeddings; 4 layers, width 256, vocabulary
8,192), fp32, the machine's threads:

- activation pass: 8 × 128 tokens run to `blocks.2.hook_resid_post` (`run_with_cache`, `stop_at_layer`, as the
  stages read activations), against a bare `transformers` forward pass through the same 3 layers;
- generation: 50 greedy new tokens with the KV cache (ours: `core.steering.generate`; the Bridge: its
  `generate`), against `transformers` `generate`;
- memory: bytes of distinct parameter and buffer storage each model holds.

Fastest of REPEATS interleaved rounds after a warm-up round: on a CPU shared with other jobs, load comes in bursts
that a median of a few rounds does not filter out (one burst made a 40 ms pass read 1.5 s), and the fastest
round is the one closest to what the code itself costs. The figures behind the choice are quoted in
core/models/hooked.py.
"""

import copy
import tempfile
from collections.abc import Callable

import torch

from bench.timing import interleaved_times
from core.loading import NO_CENTRING
from core.models import hooked_transformer_from_hf
from core.steering import SamplingSettings, generate

HOOK, LAYERS, ROWS, CONTEXT, NEW_TOKENS, REPEATS = "blocks.2.hook_resid_post", 4, 8, 128, 50, 5


def _small_llama(folder: str) -> tuple[object, object]:
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["the heart and the kidney, a pulmonary artery"] * 50, vocab_size=300,
                            special_tokens=["<|endoftext|>"])
    PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>").save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=LAYERS,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, architectures=["LlamaForCausalLM"])
    hf = LlamaForCausalLM(config).eval()
    hf.save_pretrained(folder)
    return hf, tokenizer


def storage_bytes(module: torch.nn.Module) -> int:
    """Bytes of the distinct storages behind a module's parameters and buffers (tied weights counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@torch.inference_mode()

def _fastest(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    return {name: min(values) for name, values in interleaved_times(cases, REPEATS).items()}


def run() -> list[dict]:
    from transformer_lens.model_bridge import TransformerBridge

    with tempfile.TemporaryDirectory() as folder:
        hf, tokenizer = _small_llama(folder)
        hooked = hooked_transformer_from_hf(hf, tokenizer, NO_CENTRING, "cpu")
        bridge = TransformerBridge.boot_transformers(folder, device="cpu", tokenizer=tokenizer)
    rows = torch.randint(1, 8192, (ROWS, CONTEXT), generator=torch.Generator().manual_seed(0))
    stop = int(HOOK.split(".")[1]) + 1
    to_the_hook = copy.copy(hf.model)  # shares the weights; runs only the layers up to the hook
    to_the_hook._modules = dict(hf.model._modules)  # its own module table, so hf keeps all its layers
    to_the_hook.layers = hf.model.layers[:stop]
    prompt = torch.tensor([[0, 5, 9, 12]])
    greedy = SamplingSettings(temperature=0, max_new_tokens=NEW_TOKENS, prepend_bos=False)
    cases = {
        "activations: hooked (ours)": lambda: hooked.run_with_cache(rows, names_filter=[HOOK], stop_at_layer=stop),
        "activations: bridge": lambda: bridge.run_with_cache(rows, names_filter=[HOOK], stop_at_layer=stop),
        "activations: transformers forward": lambda: to_the_hook(rows),
        "generate: hooked (ours)": lambda: generate(hooked, tokenizer.decode([5, 9, 12]), greedy),
        "generate: bridge": lambda: bridge.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False,
                                                    stop_at_eos=False, verbose=False),
        "generate: transformers": lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                                      max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                                      pad_token_id=0),
    }
    fastest = _fastest(cases)
    out = []
    for name, seconds in fastest.items():
        kind = name.split(":")[0]
        reference = f"{kind}: transformers forward" if kind == "activations" else f"{kind}: transformers"
        out.append({"name": name, "seconds": seconds, "reference": reference,
                    "reference_seconds": fastest[reference], "ratio": seconds / fastest[reference]})
    for name, module in (("memory MB: hooked (ours)", hooked), ("memory MB: bridge", bridge),
                         ("memory MB: transformers", hf)):
        out.append({"name": name, "seconds": 0.0, "value": storage_bytes(module) / 2**20})
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    for row in run():
        print(row)
