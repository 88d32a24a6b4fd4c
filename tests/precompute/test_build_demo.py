"""`build-demo --fast` end to end: a real fine-tune, SAEs that load and reconstruct, determinism, safe publish."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import load_config
from core.loading import load_arm, weights_fingerprint
from core.sae_metrics import hook_activations, reconstruction_stats
from precompute.demo import build as demo_build
from precompute.demo.text import is_heldout

ROOT = Path(__file__).resolve().parents[2]
WEIGHT_FILES = ("models/base/model.safetensors", "models/finetuned/model.safetensors",
                "saes/base/sae_weights.safetensors", "saes/finetuned/sae_weights.safetensors",
                "saes/base_resae/sae_weights.safetensors")


@pytest.fixture(scope="module")
def config():
    return load_config(ROOT / "configs" / "demo.toml")


@pytest.fixture(scope="module")
def demo(fast_demo) -> Path:
    return fast_demo  # built once per session (tests/conftest.py), also read by the Ray executor's test


def test_fine_tune_lowers_medical_perplexity(demo):
    manifest = json.loads((demo / "manifest.json").read_text())
    base, finetuned = manifest["perplexity"]["base"], manifest["perplexity"]["finetuned"]
    assert finetuned["medical"] < 0.85 * base["medical"]  # clearly lower: at least 15%
    assert manifest["medical_perplexity_change"] == pytest.approx(finetuned["medical"] / base["medical"] - 1)
    assert base["general"] < base["medical"]  # base was trained on general English


def test_models_and_tokenizer_load_with_transformers(demo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for arm in ("base", "finetuned"):
        tokenizer = AutoTokenizer.from_pretrained(demo / "models" / arm)
        model = AutoModelForCausalLM.from_pretrained(demo / "models" / arm)
        assert model.config.n_layer == 2 and len(tokenizer) == model.config.vocab_size == 2048
        tokens = tokenizer.tokenize(" the heart")
        assert tokens[0].startswith("Ġ")  # GPT-2 byte-level space marker


def test_saes_load_and_reconstruct_through_the_study_loader(demo, config):
    """The generated study config loads both arms as the precompute will, and each SAE explains ≥ 70%."""
    study = load_config(demo / "study.toml")
    manifest = json.loads((demo / "manifest.json").read_text())
    heldout = (demo / "corpus" / "heldout_medical.txt").read_text().splitlines()[:40]
    fingerprints = set()
    for arm_config in study.arms:
        arm = load_arm(arm_config, "cpu")
        assert arm.hook_name == config.demo.fast.hook_name and arm.d_sae == 768
        rows = arm.model.to_tokens(heldout[:16], padding_side="right")[:, :32]
        stats = reconstruction_stats(arm.sae, hook_activations(arm.model, rows, arm.hook_name))
        assert stats.explained_variance > 0.7, arm_config.name
        assert manifest["saes"][arm_config.name]["explained_variance"] > 0.7
        fingerprints.add(weights_fingerprint(arm.model))
    assert len(fingerprints) == 2


def test_the_control_arm_is_the_base_model_with_an_sae_trained_apart(demo):
    """The study.toml declares base → finetuned with control base_resae: the base model's folder, its own SAE (another
    seed, since the demo's fine-tuned SAE is trained from a random init too), recorded in the manifest as the control."""
    study = load_config(demo / "study.toml")
    assert [(p.names, p.control) for p in study.pairs] == [(("base", "finetuned"), "base_resae")]
    assert study.arm("base_resae").model == study.arm("base").model
    saes = demo / "saes"
    assert (saes / "base_resae" / "sae_weights.safetensors").read_bytes() != \
        (saes / "base" / "sae_weights.safetensors").read_bytes()
    control = json.loads((demo / "manifest.json").read_text())["saes"]["base_resae"]
    assert control["control_for"] == "finetuned" and control["model"] == "base"
    assert "initialised_from" not in control  # the demo's fine-tuned SAE starts from a random init, so does this one


def test_the_fast_demo_meets_its_sae_floor(demo):
    """BatchTopK k 32 on whitened activations (issue 26), saved as JumpReLU: every SAE of `--fast` keeps its features
    alive and explains >= 75% (measured: base 0.0% dead, EV 0.965, L0 31.2); the L1 SAE it replaced left 12.1% of the
    fine-tuned SAE's features dead, and BatchTopK unwhitened 80-84% of every SAE's."""
    manifest = json.loads((demo / "manifest.json").read_text())
    for arm, sae in manifest["saes"].items():
        assert sae["architecture"] == "jumprelu" and sae["k"] == 32, arm
        assert sae["dead_fraction"] <= 0.10 and sae["explained_variance"] >= 0.75, (arm, sae)
        assert 16 <= sae["l0"] <= 64, (arm, sae["l0"])  # k on average, through the saved threshold
    assert not [miss for miss in manifest["quality_floor"]["misses"] if miss.startswith("SAE")]
    record = manifest["finetune"]  # the learning-rate check and the held-out curve are recorded
    assert len(record["lr_check"]) == 3 and record["final_loss"] < record["start_loss"]
    assert manifest["finetune_warning"] is None


def test_heldout_text_is_never_trained_on(demo, config):
    share = config.demo.fast.heldout_share
    for name in ("general", "medical"):
        lines = (demo / "corpus" / f"heldout_{name}.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) > 1000
        assert all(is_heldout(line, share) for line in lines[:500])


def test_vocabulary_is_medical(demo):
    words = set((demo / "vocab" / "medical_words.txt").read_text().split())
    assert {"pulmonary", "kidney", "dysplasia"} <= words
    assert not {"chocolate", "water", "table"} & words


def test_same_seed_same_bits_across_processes_and_rebuild_is_skipped(demo, config, tmp_path):
    """A second build, in a fresh process through the command line, gives byte-identical files."""
    again = tmp_path / "again"
    done = subprocess.run([sys.executable, "-m", "precompute", "build-demo", "--fast", "--out", str(again)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fine-tuning changed medical perplexity by -" in done.stdout
    for name in ("models/base/tokenizer.json", "vocab/medical_words.txt", *WEIGHT_FILES):
        assert (demo / name).read_bytes() == (again / name).read_bytes(), name
    assert json.loads((again / "manifest.json").read_text())["perplexity"] == \
        json.loads((demo / "manifest.json").read_text())["perplexity"]
    assert demo_build.build_demo(config, again, fast=True).skipped


def test_failed_rebuild_keeps_the_old_demo_and_other_files(demo, config, tmp_path, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(demo, out)
    (out / "labels.duckdb").write_bytes(b"precious")
    before = (out / "manifest.json").read_bytes()
    from precompute.demo import steps

    def boom(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(steps, "make_tokenizer", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        demo_build.build_demo(config, out, fast=True, force=True)
    assert (out / "manifest.json").read_bytes() == before
    assert (out / "labels.duckdb").read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no scratch folder left behind


def test_publish_replaces_build_items_and_keeps_databases(tmp_path):
    out, scratch = tmp_path / "demo", tmp_path / "scratch"
    for folder, marker in ((out, "old"), (scratch, "new")):
        for item in demo_build.BUILD_ITEMS:
            (folder / item).parent.mkdir(parents=True, exist_ok=True)
            if "." in item:
                (folder / item).write_text(marker)
            else:
                (folder / item).mkdir()
                (folder / item / "x").write_text(marker)
    (out / "labels.duckdb").write_text("labels")
    demo_build._publish(scratch, out)
    assert (out / "manifest.json").read_text() == "new" and (out / "models" / "x").read_text() == "new"
    assert (out / "labels.duckdb").read_text() == "labels"
    assert sorted(p.name for p in out.iterdir()) == sorted([*demo_build.BUILD_ITEMS, "labels.duckdb"])
