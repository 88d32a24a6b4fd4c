"""Inspect of a 64-token held-out text on the embedded demo, both arms (features per token, KL, log-prob change),
against two bare forward passes of the two models over the same tokens, from the same run.

Targets (issue #15): ≤ 1.5× the two bare passes, and ≤ 300 ms on this CPU. Fastest of REPEATS interleaved rounds
after a warm-up round: the cases take turns (each first in half the rounds), and the fastest round is the one a neighbour's burst on a shared CPU
spared (medians on a 2-core machine at load 6 moved the bare passes from 0.1 to 2.3 s between runs). Needs the
demo (`make demo`, or a copy in data/demo); without it the benchmark says so and times nothing.
"""

import logging
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from bench.timing import interleaved_times
from core.config import load_config
from core.inspect import inspect_text
from core.loading import load_arm

CONFIG, N_TOKENS, REPEATS = "configs/demo.toml", 64, 30
logger = logging.getLogger(__name__)


def _text_of_n_tokens(model, path: str, n: int) -> str:
    """The first n tokens of the file, decoded: a text that tokenises back to exactly n tokens (checked)."""
    ids = model.to_tokens(Path(path).read_text(encoding="utf-8")[:4000], prepend_bos=False)[0, :n].tolist()
    text = model.tokenizer.decode(ids)
    assert model.to_tokens(text, prepend_bos=False).shape[1] == n, "the decoded text re-tokenises differently"
    return text


def _machine() -> str:
    """The CPU's model name and the threads torch uses, or the GPU's name: the figures mean nothing without it."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        name = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {torch.get_num_threads()} torch threads"



def _fastest(cases: dict[str, Callable[[], object]]) -> dict[str, float]:
    return {name: min(values) for name, values in interleaved_times(cases, REPEATS).items()}


def run() -> list[dict]:
    config = load_config(CONFIG)
    if not Path(config.features_db).parent.is_dir():
        logger.warning("no demo at %s: build it with `make demo`", config.features_db)
        return []
    base, finetuned = (load_arm(arm, config.device, verify=False, generates=False) for arm in config.arms[:2])
    text = _text_of_n_tokens(base.model, config.corpus.paths[-1], N_TOKENS)
    tokens = base.model.to_tokens(text)  # [1, 65]: BOS + 64

    def bare_passes() -> None:
        with torch.inference_mode():
            base.model(tokens)
            finetuned.model(tokens)

    seconds = _fastest({"bare": bare_passes, "inspect": lambda: inspect_text(base, finetuned, text)})
    device = f"{base.model.cfg.device} ({_machine()})"
    return [
        {"name": f"two bare forward passes, {N_TOKENS} tokens", "seconds": seconds["bare"], "device": device},
        {"name": f"inspect both arms, {N_TOKENS} tokens", "seconds": seconds["inspect"],
         "reference": "two bare forward passes", "reference_seconds": seconds["bare"],
         "ratio": seconds["inspect"] / seconds["bare"], "target_ratio": 1.5, "target_seconds": 0.3,
         "device": device},
    ]
