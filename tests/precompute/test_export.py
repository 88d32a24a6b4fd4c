"""`export` and `import-labels` on a tiny study built end to end (tests/pair_study.py, the fine-tuned arm's model
moved by seeded noise so the pair has a lens and a ranking): Neuronpedia's layout field by field against the schema
read from Neuronpedia's repository, the HTML report against the database, labels round trips, bad input."""

import gzip
import json
import re
import shutil
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch

from core import explanations as expl
from core import labels
from core.config import load_config
from core.corpus import load_corpus_rows, token_set
from core.hook_reads import features_at_hook
from core.loading import load_arm
from pair_study import CONTEXT, D_SAE, build_pair_study
from precompute.cli import main

pytestmark = pytest.mark.slow  # the study takes ~60 s to build on a loaded 2-core machine

# Neuronpedia's export records, read from hijohnnylin/neuronpedia (main, 2026-08-20):
# utils/neuronpedia-utils/neuronpedia_utils/db_models/{feature,activation,source,source_set,source_release,model}.py,
# written by convert-saedashboard-to-neuronpedia-export.py as `dataclass.__dict__` (every field, defaults included)
# into <model>/<layer>-<source set>/{release,model,sourceset,source}.jsonl, features/*.jsonl.gz, activations/*.jsonl.gz.
S, I, F, B, L = str, int, float, bool, list
OPT = type(None)
FEATURE = {"modelId": S, "layer": S, "index": S, "creatorId": (S, OPT), "createdAt": S, "maxActApprox": (F, I, OPT),
           "hasVector": B, "vector": L, "vectorLabel": (S, OPT), "vectorDefaultSteerStrength": (F, I, OPT),
           "hookName": (S, OPT), "topkCosSimIndices": L, "topkCosSimValues": L, "neuron_alignment_indices": L,
           "neuron_alignment_values": L, "neuron_alignment_l1": L, "correlated_neurons_indices": L,
           "correlated_neurons_pearson": L, "correlated_neurons_l1": L, "correlated_features_indices": L,
           "correlated_features_pearson": L, "correlated_features_l1": L, "neg_str": L, "neg_values": L,
           "pos_str": L, "pos_values": L, "frac_nonzero": (F, I), "freq_hist_data_bar_heights": L,
           "freq_hist_data_bar_values": L, "logits_hist_data_bar_heights": L, "logits_hist_data_bar_values": L,
           "decoder_weights_dist": L, "sourceSetName": (S, OPT)}
ACTIVATION = {"id": S, "tokens": L, "index": S, "layer": S, "modelId": S, "maxValue": (F, I),
              "maxValueTokenIndex": I, "minValue": (F, I), "values": L, "creatorId": S, "dataSource": (S, OPT),
              "dataIndex": (S, OPT), "dfaValues": L, "dfaTargetIndex": (I, OPT), "dfaMaxValue": (F, OPT),
              "createdAt": S, "lossValues": L, "logitContributions": (S, OPT), "binMin": (F, OPT),
              "binMax": (F, OPT), "binContains": (F, OPT), "qualifyingTokenIndex": (I, OPT), "zIndices": (L, OPT),
              "zValues": (L, OPT)}
SOURCE = {"id": S, "modelId": S, "setName": S, "creatorId": S, "hasDashboards": B, "inferenceEnabled": B,
          "inferenceHosts": L, "saelensConfig": (S, OPT), "saelensRelease": (S, OPT), "saelensSaeId": (S, OPT),
          "hfRepoId": (S, OPT), "hfFolderId": (S, OPT), "visibility": S, "defaultOfModelId": (S, OPT), "hasUmap": B,
          "hasUmapLogSparsity": B, "hasUmapClusters": B, "num_prompts": (I, OPT), "num_tokens_in_prompt": (I, OPT),
          "dataset": (S, OPT), "notes": (S, OPT), "createdAt": S}
SOURCE_SET = {"modelId": S, "name": S, "creatorId": S, "hasDashboards": B, "visibility": S, "description": S,
              "type": S, "creatorName": S, "urls": L, "creatorEmail": (S, OPT), "releaseName": (S, OPT),
              "defaultOfModelId": (S, OPT), "defaultRange": I, "defaultShowBreaks": B, "showDfa": B,
              "showCorrelated": B, "showHeadAttribution": B, "showUmap": B, "createdAt": S}
RELEASE = {"name": S, "description": S, "creatorName": S, "creatorId": S, "visibility": S, "isNewUi": B,
           "featured": B, "descriptionShort": (S, OPT), "urls": L, "creatorEmail": (S, OPT),
           "creatorNameShort": (S, OPT), "defaultSourceSetName": (S, OPT), "defaultSourceId": (S, OPT),
           "defaultUmapSourceIds": L, "createdAt": S}
MODEL = {"id": S, "instruct": B, "creatorId": S, "displayNameShort": S, "displayName": S, "tlensId": (S, OPT),
         "dimension": (I, OPT), "visibility": S, "defaultSourceSetName": (S, OPT), "defaultSourceId": (S, OPT),
         "inferenceEnabled": B, "layers": I, "neuronsPerLayer": I, "createdAt": S, "owner": S, "updatedAt": S,
         "website": (S, OPT)}


def _check(record: dict, schema: dict, what: str) -> None:
    assert set(record) == set(schema), f"{what}: {set(record) ^ set(schema)}"
    for name, kind in schema.items():
        assert isinstance(record[name], kind) and not (kind is I and isinstance(record[name], bool)), \
            f"{what}.{name} = {record[name]!r}"
    if "createdAt" in record:
        datetime.fromisoformat(record["createdAt"])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    config = build_pair_study(tmp_path_factory.mktemp("export"), CONTEXT * 12, finetuned_noise=0.05)
    with duckdb.connect(config.features_db, read_only=True) as con:
        fingerprints = dict(con.execute("SELECT arm, sae_fingerprint FROM arms").fetchall())
    path = Path(config.labels_db)
    labels.save_label(path, config.name, "finetuned", 3, fingerprints["finetuned"], "medical", "heart words", "ann")
    labels.save_label(path, config.name, "finetuned", 3, fingerprints["finetuned"], "unsure", "", "bob")
    labels.save_label(path, config.name, "base", 5, fingerprints["base"], "not_medical", "digits", "ann")
    labels.save_label(path, config.name, "base", 6, "an-older-sae", "medical", "", "ann")  # another SAE's: left out
    expl.save_explanation(Path(config.explanations_db), config.name, expl.Explanation(
        "base", 5, fingerprints["base"], "numbers and digits", "local:test", 1, 0.5, 0.75, 40, 10, 30))
    return config, fingerprints


def _run(*args: str) -> int:
    return main(list(args))


def test_neuronpedia_layout_field_by_field(study, tmp_path):
    config, _ = study
    out = tmp_path / "np"
    assert _run("export", "--format", "neuronpedia", "--arm", "finetuned", "--config", str(Path(config.features_db)
                .parent / "study.toml"), "--out", str(out)) == 0
    source = out / "pair-finetuned" / "1-pair-24"  # <model id>/<layer>-<source set>
    assert sorted(p.name for p in source.iterdir()) == ["activations", "features", "model.jsonl", "release.jsonl",
                                                        "source.jsonl", "sourceset.jsonl"]
    for name, schema in (("source", SOURCE), ("sourceset", SOURCE_SET), ("release", RELEASE), ("model", MODEL)):
        lines = (source / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == 1
        _check(json.loads(lines[0]), schema, name)
    features = [json.loads(x) for x in gzip.decompress((source / "features" / "batch-0.jsonl.gz").read_bytes())
                .splitlines()]
    activations = [json.loads(x) for x in gzip.decompress((source / "activations" / "batch-0.jsonl.gz")
                                                          .read_bytes()).splitlines()]
    assert [f["index"] for f in features] == [str(i) for i in range(D_SAE)]
    for record in features:
        _check(record, FEATURE, "feature")
    for record in activations:
        _check(record, ACTIVATION, "activation")
    _against_database(config, features, activations)
    _against_brute_force(config, features)


def _against_database(config, features, activations):
    with duckdb.connect(config.features_db, read_only=True) as con:
        stats = {f: (d, m) for f, d, m in con.execute("SELECT feature, frac_nonzero, max_act FROM feature_activations "
                                                      "WHERE arm = 'finetuned'").fetchall()}
        top = con.execute("SELECT token, value FROM top_tokens WHERE arm = 'finetuned' AND feature = 15 AND kind = "
                          "'top' ORDER BY rank").fetchall()
        hist = con.execute("SELECT counts FROM histograms WHERE arm = 'finetuned' AND feature = 15").fetchone()[0]
        n_contexts = dict(con.execute("SELECT feature, count(*) FROM contexts WHERE arm = 'finetuned' GROUP BY feature")
                          .fetchall())
        near = con.execute("SELECT neighbour FROM feature_neighbours WHERE arm = 'finetuned' AND feature = 15 "
                           "ORDER BY rank").fetchall()
    for record in features:
        density, peak = stats[int(record["index"])]
        assert record["frac_nonzero"] == pytest.approx(density, rel=1e-6)
        assert record["maxActApprox"] == pytest.approx(peak, rel=1e-6)
    planted = features[15]  # pair_study's PLANTED feature, a live one
    assert planted["pos_str"] == [t for t, _ in top] and planted["pos_values"] == pytest.approx([v for _, v in top])
    assert planted["freq_hist_data_bar_heights"] == list(hist) and sum(hist) > 0
    assert planted["topkCosSimIndices"] == [n for (n,) in near]
    by_feature = {}
    for record in activations:
        by_feature[record["index"]] = by_feature.get(record["index"], 0) + 1
        assert record["maxValue"] == max(record["values"]) and len(record["values"]) == len(record["tokens"])
        assert record["values"][record["maxValueTokenIndex"]] == record["maxValue"]
    assert by_feature == {str(f): n for f, n in n_contexts.items()}
    assert len({r["id"] for r in activations}) == len(activations)


def _against_brute_force(config, features):
    """Correlated features against numpy's corrcoef over the same tokens; logit histograms cover the vocabulary."""
    loaded = load_arm(next(a for a in config.arms if a.name == "finetuned"), "cpu", verify=False, generates=False)
    rows = load_corpus_rows(config.corpus, loaded.model.tokenizer)[list(token_set(config.corpus, CONTEXT * 12).rows)]
    with torch.no_grad():
        acts = features_at_hook(loaded.model, loaded.sae, loaded.hook_name, rows).reshape(-1, D_SAE).double().numpy()
    live = acts.std(axis=0) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.corrcoef(acts, rowvar=False)
    for f in np.flatnonzero(live):
        others = [g for g in np.flatnonzero(live) if g != f]
        reference = sorted(others, key=lambda g: -corr[f, g])[:3]
        record = features[f]
        assert record["correlated_features_pearson"] == pytest.approx(corr[f, reference], abs=1e-5)
        assert record["correlated_features_indices"] == [int(g) for g in reference] or \
            np.ptp(corr[f, reference]) < 1e-5  # ties may order either way
        assert sum(record["logits_hist_data_bar_heights"]) == loaded.model.cfg.d_vocab
    assert 0 < (~live).sum() < D_SAE and all(features[f]["correlated_features_indices"] == []
                                             for f in np.flatnonzero(~live))  # a feature that never fired: none


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.text, self.assets, self.sentence, self._in = [], [], "", False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.assets += [attrs[k] for k in ("src", "href") if k in attrs] + ([tag] if tag in ("script", "link") else [])
        self._in = attrs.get("id") == "what-changed"

    def handle_data(self, data):
        self.text.append(data)
        if self._in:
            self.sentence += data


def test_html_report_holds_the_sentence_and_the_database_numbers(study, tmp_path):
    config, _ = study
    toml = str(Path(config.features_db).parent / "study.toml")
    assert _run("export", "--format", "html", "--config", toml, "--out", str(tmp_path / "h")) == 0
    page = (tmp_path / "h" / "what-changed-base-finetuned.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    parsed.close()
    text = "".join(parsed.text)
    assert parsed.assets == [] and not re.search(r"https?://", page)  # nothing fetched from anywhere
    with duckdb.connect(config.features_db, read_only=True) as con:
        hook, medical = con.execute("SELECT hook_name, medical_top20_b FROM diff_lens WHERE kind = 'first' "
                                    "ORDER BY layer DESC LIMIT 1").fetchone()
        lens = [t.strip() for (t,) in con.execute(
            "SELECT token FROM diff_lens_tokens WHERE hook_name = ? AND kind = 'first' AND unembed_arm = 'finetuned' "
            "AND direction = 'top' ORDER BY rank LIMIT 8", [hook]).fetchall()]
        risers = [f for (f,) in con.execute("SELECT feature FROM feature_change WHERE rank_increase < 3 "
                                            "ORDER BY rank_increase").fetchall()]
        fates = con.execute("SELECT arm, status, count(*) FROM feature_matches GROUP BY ALL").fetchall()
        change = con.execute("SELECT change FROM feature_change WHERE rank_increase = 0").fetchone()[0]
    assert parsed.sentence.startswith("From base to finetuned: the mean activation difference")
    assert f"“{', '.join(lens)}”" in parsed.sentence and f"{medical} of its top 20" in parsed.sentence
    assert all(f"#{f}" in parsed.sentence for f in risers)
    for arm, status, count in fates:
        assert re.search(rf"{arm}\s*{status}\s*{count:,}", text)
    assert format(change, ".4g") in text  # the top riser's change in its table


def _copy_study(config, root: Path, fingerprint_of_finetuned: str | None = None):
    """The same features database (or one whose finetuned SAE has another fingerprint) with empty label files."""
    root.mkdir()
    shutil.copy(config.features_db, root / "features.duckdb")
    if fingerprint_of_finetuned:
        with duckdb.connect(str(root / "features.duckdb")) as con:
            con.execute("UPDATE arms SET sae_fingerprint = ? WHERE arm = 'finetuned'", [fingerprint_of_finetuned])
    text = (Path(config.features_db).parent / "study.toml").read_text()
    text = text.replace(config.features_db, str(root / "features.duckdb")).replace(config.labels_db,
                                                                                   str(root / "labels.duckdb"))
    (root / "study.toml").write_text(text)
    return load_config(str(root / "study.toml"))


def _events(config):
    frame = labels.history(Path(config.labels_db), config.name)
    return [(r.arm, r.feature, r.sae_fingerprint, r.label, r.note or "", r.author) for r in frame.itertuples()]


def test_labels_round_trip_onto_the_same_sae_and_refused_onto_another(study, tmp_path, capsys):
    config, fingerprints = study
    toml = str(Path(config.features_db).parent / "study.toml")
    assert _run("export", "--format", "labels", "--config", toml, "--out", str(tmp_path / "l")) == 0
    assert "3 labels, 1 explanations, 1 left out" in capsys.readouterr().out
    file = str(tmp_path / "l" / "labels.json")
    twin = _copy_study(config, tmp_path / "twin")
    assert _run("import-labels", file, "--config", str(tmp_path / "twin" / "study.toml")) == 0
    mine = [e for e in _events(config) if e[2] != "an-older-sae"]
    assert _events(twin) == mine  # every event of the current SAEs, in order, with its annotator and note
    theirs = expl.current_explanations(Path(twin.explanations_db), twin.name, fingerprints)
    assert theirs[["arm", "feature", "explanation", "explainer", "simulation", "detection"]].values.tolist() == [
        ["base", 5, "numbers and digits", "local:test", 0.5, 0.75]]
    assert _run("import-labels", file, "--config", str(tmp_path / "twin" / "study.toml")) == 0  # again: nothing new
    assert "0 labels, 3 labels already there, 0 explanations" in capsys.readouterr().out
    assert _events(twin) == mine

    other = _copy_study(config, tmp_path / "other", fingerprint_of_finetuned="f" * 64)
    assert _run("import-labels", file, "--config", str(tmp_path / "other" / "study.toml")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "another SAE than arm 'finetuned'" in err and "\n" not in err
    assert not Path(other.labels_db).exists()  # the base arm's labels were not written either


def test_bad_input_is_one_line_and_writes_nothing(study, tmp_path, capsys):
    config, _ = study
    toml = str(Path(config.features_db).parent / "study.toml")
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    cases = [(["--format", "labels", "--out", str(out)], "is not empty: pass --force"),
             (["--format", "neuronpedia", "--arm", "nope", "--out", str(tmp_path / "a")], "--arm nope: no such arm"),
             (["--format", "html", "--pair", "base,nope", "--out", str(tmp_path / "b")], "not a pair of this study")]
    for args, message in cases:
        assert _run("export", "--config", toml, *args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    missing = _copy_study(config, tmp_path / "missing")
    Path(missing.features_db).unlink()
    assert _run("export", "--format", "html", "--config", str(tmp_path / "missing" / "study.toml"), "--out",
                str(tmp_path / "c")) == 2
    assert "no published features database" in capsys.readouterr().err
    assert _run("export", "--format", "labels", "--config", toml, "--out", str(out), "--force") == 0
    assert [p.name for p in out.iterdir()] == ["labels.json"]  # --force replaced the folder whole
