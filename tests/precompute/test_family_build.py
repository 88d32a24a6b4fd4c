"""build-demo --recipe family: the code text from pinned wheels, the rows each model trains on, the roles read from
the pairs, and (slow) the whole --fast build through the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.errors import StudyInputError
from core.family import Family
from core.merge_curve import equal_accuracy_t
from precompute.demo import text as text_sources
from precompute.demo.family import family_of, family_rows, is_family_recipe
from precompute.family_text import code_lines, iter_code_files, split_code
from tests.factories import byte_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def test_code_lines_keep_indentation_and_drop_blank_lines():
    files = ["def f(x):\n\tif x:\n        return 1   \n\n", "y = 2\n"]
    assert code_lines(files) == ["def f(x):", "    if x:", "        return 1", "y = 2"]


def test_code_is_split_by_file_hash_the_same_way_every_time():
    first_files = []
    for text in iter_code_files():
        first_files.append(text)
        if len(first_files) == 40:
            break
    split = split_code(0.08)
    assert split == split_code(0.08)  # deterministic
    heldout = [f for f in first_files if text_sources.is_heldout(f, 0.08)]
    kept = [f for f in first_files if not text_sources.is_heldout(f, 0.08)]
    assert heldout and kept
    # the first held-out file's lines open the held-out part; the first kept file's open the training part
    assert split.heldout[:3] == code_lines(heldout[:1])[:3] and split.train[:3] == code_lines(kept[:1])[:3]
    assert len(split.heldout) > 1000 and len(split.train) > 10 * len(split.heldout) // 2


def test_roles_come_from_the_pairs_not_the_names():
    config = load_config(ROOT / "configs" / "family.toml")
    assert family_of(config) == Family("base", "medical", "code", "merge") and is_family_recipe(config)
    demo = load_config(ROOT / "configs" / "demo.toml")
    assert not is_family_recipe(demo)
    with pytest.raises(StudyInputError, match="exactly one family among \\[\\[pairs\\]\\].*found none"):
        family_of(demo)


def test_rows_per_use_are_disjoint_where_they_must_be():
    docs = [f"word{i} and word{i + 1} then more words here" for i in range(8000)]
    splits = {name: text_sources.DomainSplit(docs, docs[:300]) for name in ("general", "medical", "code")}
    recipe = load_config(ROOT / "configs" / "family.toml").demo.fast
    tokenizer = byte_tokenizer(tuple(docs[:50]))
    rows = family_rows(splits, tokenizer, recipe, seed=0)
    ctx = recipe.n_positions
    n_ft = recipe.finetune_tokens // ctx
    n_general = int(n_ft * recipe.finetune_general_share)
    assert rows["base"].shape == (recipe.base_tokens // ctx, ctx)
    assert rows["finetune_medical"].shape[0] == rows["finetune_code"].shape[0] == n_ft
    assert rows["check_medical"].shape[0] == recipe.finetune_check_rows
    # each fine-tune's general rows come after the base's, and the two fine-tunes' differ
    general_ft = {tuple(r.tolist()) for r in rows["finetune_medical"][-n_general:]}
    assert not general_ft & {tuple(r.tolist()) for r in rows["base"]}
    assert not general_ft & {tuple(r.tolist()) for r in rows["finetune_code"][-n_general:]}
    # the held-out check is not trained on
    assert not {tuple(r.tolist()) for r in rows["check_medical"]} & {tuple(r.tolist()) for r in
                                                                      rows["finetune_medical"]}
    assert rows["sae"].shape[0] == 3 * (recipe.sae_tokens // ctx // 3 + 1)
    assert torch.equal(rows["sae"], family_rows(splits, tokenizer, recipe, seed=0)["sae"])
    short = {**splits, "general": text_sources.DomainSplit(docs[:500], docs[:10])}
    with pytest.raises(StudyInputError, match="demo.base_tokens: general text gives"):
        family_rows(short, tokenizer, recipe, seed=0)


@pytest.mark.slow
def test_fast_family_build_through_the_command_line(tmp_path):
    pytest.importorskip("mergekit", reason="pip install -r requirements-models.txt")
    out = tmp_path / "family"
    command = [sys.executable, "-m", "precompute", "build-demo", "--recipe", "family", "--fast", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SLERP medical -> code: equal accuracy at t = " in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    slerp = manifest["slerp"]
    assert slerp["ts"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert slerp["chosen"]["t"] == pytest.approx(equal_accuracy_t(slerp["ts"], slerp["accuracy_a"],
                                                                  slerp["accuracy_b"]).t)
    merge = out / "models" / "merge"
    merge_yaml = (merge / "mergekit_config.yml").read_text()
    assert f"t: {slerp['chosen']['t']!r}" in merge_yaml
    assert str((out / "models" / "medical").resolve()) in merge_yaml and ".building" not in merge_yaml
    for arm in ("base", "medical", "code", "merge"):
        sae_cfg = json.loads((out / "saes" / arm / "cfg.json").read_text())
        assert sae_cfg["metadata"]["hook_name"] == "blocks.1.hook_mlp_out"
    study = load_config(out / "study.toml")
    assert family_of(study) == Family("base", "medical", "code", "merge")
    assert [Path(p).name for p in study.corpus.paths] == ["heldout_general.txt", "heldout_medical.txt",
                                                          "heldout_code.txt"]
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "already built" in again.stdout
