"""Where a model comes from: a hub name, a local `save_pretrained` folder, or a GGUF file (dequantised by
transformers' `gguf_file=` loader, which needs the `gguf` package). Always fp32 on the CPU: the conversion to a
HookedTransformer moves it to the study's device."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from core.errors import StudyInputError
from core.models.registry import architecture_name, family_for

logger = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"


def load_hf_model(model_ref: str, arm_name: str = "") -> tuple[Any, Any]:
    """`transformers` causal LM (eval mode, fp32) and tokenizer from a hub name, a local folder or a .gguf file."""
    field = f"arms[{arm_name}].model"
    path = Path(model_ref)
    if path.suffix.lower() == ".gguf":
        return _load_gguf(path, field)
    looks_local = model_ref.startswith((".", "/")) or path.exists() or model_ref.count("/") > 1
    if looks_local and not (path / "config.json").is_file():
        raise StudyInputError(
            f"{field}: {model_ref} is not a model folder (no config.json) nor a .gguf file; "
            "build the demo with `python -m precompute build-demo` or save yours with save_pretrained(folder)"
        )
    return _from_pretrained(model_ref, {}, field)


def _load_gguf(path: Path, field: str) -> tuple[Any, Any]:
    if not path.is_file():
        raise StudyInputError(f"{field}: GGUF file {path} does not exist")
    with path.open("rb") as handle:
        if handle.read(4) != GGUF_MAGIC:
            raise StudyInputError(f"{field}: {path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader needs it)
    except ImportError as err:
        raise StudyInputError(f"{field}: reading {path.name} needs the gguf package: pip install -r requirements-models.txt") from err
    return _from_pretrained(str(path.parent), {"gguf_file": path.name}, field)


def _from_pretrained(source: str, extra: dict[str, Any], field: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = f"{source}/{extra['gguf_file']}" if extra else source
    try:
        config = AutoConfig.from_pretrained(source, **extra)
        _check_architecture(config, field)  # before reading weights an adapter could not convert
        with _no_weight_loading_bar():
            hf_model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=torch.float32, **extra).eval()
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except OSError as err:
        raise StudyInputError(
            f"{field}: could not load {where!r} ({_first_line(err)}); give a local folder, a .gguf file or a hub "
            "name reachable from here"
        ) from err
    except (ValueError, KeyError, RuntimeError) as err:
        if not extra:
            raise
        # transformers' GGUF reader raises these for a GGUF that holds no language model it knows.
        raise StudyInputError(f"{field}: {where} is a GGUF file but not a causal language model transformers can "
                              f"read ({_first_line(err)})") from err
    use_plain_text_bos(tokenizer)
    return hf_model, tokenizer


# A plain document boundary, in the spellings the families use (GPT-2, SmolLM, Qwen: the first; Llama 3: the second).
PLAIN_END_OF_TEXT = ("<|endoftext|>", "<|end_of_text|>")


def use_plain_text_bos(tokenizer: Any) -> None:
    """Every row the product runs is plain text: corpus rows are "BOS doc EOS doc EOS …" and prompts start with
    BOS. An instruct tokenizer's BOS is often the chat template's turn opener (SmolLM2-Instruct: `<|im_start|>`,
    after which the model expects a role name), and Qwen's tokenizers have none: rows then start with the
    vocabulary's plain end-of-text token (one the chat template does not write), as GPT-2's do; without one, a
    missing BOS is the EOS. Measured on SmolLM2-135M-Instruct (held-out text, the tokens of each row's first
    document): perplexity 118.7 after `<|endoftext|>` against 130.5 after `<|im_start|>` (general), 48.2 against
    56.0 (medical). The EOS stays the tokenizer's own, even a turn end (`<|im_end|>`): as the separator between
    documents it reads better than `<|endoftext|>` (the next document's text: 59.7 against 99.5 general, 29.2
    against 33.5 medical). Chat generation (the explainer) formats with the chat template, which this leaves alone."""
    template = tokenizer.chat_template if isinstance(getattr(tokenizer, "chat_template", None), str) else ""
    vocabulary = tokenizer.get_vocab()
    plain = next((t for t in PLAIN_END_OF_TEXT if t in vocabulary and t not in template), None)
    turn_opener = tokenizer.bos_token is not None and tokenizer.bos_token in template
    if tokenizer.bos_token is None or (plain is not None and turn_opener):
        lead = plain if plain is not None else tokenizer.eos_token
        if lead is not None:
            logger.info("rows start with %r in place of BOS %r", lead, tokenizer.bos_token)
            tokenizer.bos_token = lead


def _check_architecture(config: Any, field: str) -> None:
    architecture = architecture_name(config)
    try:
        family_for(architecture)
    except StudyInputError as err:
        raise StudyInputError(f"{field}: {err}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextmanager
def _no_weight_loading_bar() -> Iterator[None]:
    # transformers draws a bar per load; loading takes a second and the precompute has its own progress.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
