"""core.export: the weights' fields against brute force, the labels file's checks, the HTML report's rendering."""

import json
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import StudyInputError
from core.export import html, labels as label_file
from core.export.weights import correlated_features, logit_histograms, neuron_alignment
from core.explain.summary import SummaryFacts
from core.matching import CoactivationAccumulator


def test_logit_histograms_match_numpy_histogram_per_feature():
    W_dec, W_U = torch.randn(7, 5), torch.randn(5, 53)
    hist = logit_histograms(W_dec, W_U, bins=6)
    logits = (W_dec @ W_U).numpy()
    for f in range(7):
        counts, edges = np.histogram(logits[f], bins=6)  # numpy: equal bins from min to max, max in the last
        assert hist.heights[f].tolist() == counts.tolist()
        np.testing.assert_allclose(hist.values[f], (edges[:-1] + edges[1:]) / 2, rtol=1e-5, atol=1e-6)
    assert (hist.heights.sum(axis=1) == 53).all()


def test_neuron_alignment_by_hand():
    W_dec = torch.tensor([[0.1, -0.6, 0.3, 0.0], [2.0, 0.0, 0.0, 0.0]])
    ranked = neuron_alignment(W_dec, k=2)
    assert ranked.indices[0].tolist() == [1, 2]  # |-0.6| then 0.3
    np.testing.assert_allclose(ranked.values[0], [-0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(ranked.second[0], [-0.6, 0.3], rtol=1e-6)  # L1 norm of row 0 is 1.0
    assert ranked.indices[1][0] == 0 and ranked.second[1][0] == pytest.approx(1.0)


def test_correlated_features_match_numpy_corrcoef():
    """Planted: feature 3 is 2x feature 0 plus noise (strongly correlated), feature 5 never fires (no correlation)."""
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(400, 6)), 0)
    acts[:, 3] = 2 * acts[:, 0] + 0.1 * np.maximum(rng.normal(size=400), 0)
    acts[:, 5] = 0
    acc = CoactivationAccumulator(6, 6)
    acc.update(torch.tensor(acts, dtype=torch.float32), torch.tensor(acts, dtype=torch.float32))
    ranked = correlated_features(acc.result(), k=3)
    reference = np.corrcoef(acts[:, :5].astype(np.float32).astype(np.float64), rowvar=False)
    for f in range(5):
        others = [g for g in range(5) if g != f]
        order = sorted(others, key=lambda g: -reference[f, g])[:3]
        assert ranked.indices[f].tolist() == order
        np.testing.assert_allclose(ranked.values[f], reference[f, order], atol=1e-6)
        norms = np.sqrt((acts[:, f] ** 2).sum() * (acts[:, order] ** 2).sum(axis=0))
        np.testing.assert_allclose(ranked.second[f], (acts[:, f] @ acts[:, order]) / norms, rtol=1e-5)
    assert ranked.indices[0][0] == 3 and ranked.values[0][0] > 0.99
    assert ranked.indices[5].tolist() == [-1, -1, -1]  # a dead feature correlates with nothing


ARMS = [label_file.ArmSae("base", "fp-base", 6, "s/base"), label_file.ArmSae("finetuned", "fp-ft", 6, "s/ft")]


def _events():
    return pd.DataFrame({"id": [1, 2, 3], "study": ["s"] * 3, "arm": ["base", "base", "finetuned"],
                         "feature": [2, 2, 4], "sae_fingerprint": ["fp-base", "fp-OLD", "fp-ft"],
                         "label": ["medical", "unsure", "not_medical"], "note": ["heart", None, ""],
                         "author": ["ann", "bob", "(anonymous)"],
                         "labelled_at": pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-03"])})


def test_labels_document_keeps_current_saes_events_and_is_json():
    doc = json.loads(json.dumps(label_file.labels_document("s", ARMS, _events(), pd.DataFrame())))
    assert [(e["arm"], e["feature"], e["label"], e["author"]) for e in doc["labels"]] == [
        ("base", 2, "medical", "ann"), ("finetuned", 4, "not_medical", "(anonymous)")]  # fp-OLD is another SAE
    assert "id" not in doc["labels"][0] and doc["labels"][0]["labelled_at"] == "2026-01-01T00:00:00"
    assert doc["arms"]["base"] == {"sae_fingerprint": "fp-base", "d_sae": 6, "sae_source": "s/base"}


def test_import_check_refuses_another_sae_and_a_missing_arm_in_one_line():
    doc = label_file.labels_document("s", ARMS, _events(), pd.DataFrame())
    label_file.check_same_saes(doc, {"base": "fp-base", "finetuned": "fp-ft"}, "f.json")  # same SAEs: fine
    with pytest.raises(StudyInputError, match=r"another SAE than arm 'finetuned' .*fp-ft.*fp-new") as err:
        label_file.check_same_saes(doc, {"base": "fp-base", "finetuned": "fp-new"}, "f.json")
    assert "\n" not in str(err.value)
    with pytest.raises(StudyInputError, match="does not have"):
        label_file.check_same_saes(doc, {"base": "fp-base"}, "f.json")
    with pytest.raises(StudyInputError, match="not a labels export"):
        label_file.parse_document('{"a": 1}', "f.json")


def test_new_events_counts_repeats_and_reads_either_annotator_name():
    file = [{"arm": "b", "feature": 1, "sae_fingerprint": "x", "label": "medical", "note": "", "author": "ann"}] * 2
    there = [{"arm": "b", "feature": 1, "sae_fingerprint": "x", "label": "medical", "note": None, "annotator": "ann"}]
    assert len(label_file.new_events(file, there)) == 1  # one of the two is there already
    assert label_file.new_events(file, there * 2) == []


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]

    def handle_data(self, data):
        self.text.append(data)


def test_render_escapes_and_references_nothing_outside():
    card = html.FeatureCard("finetuned", 7, -0.25, "<script> | heart", "fires on <b>", "medical",
                            (html.Context(("a", " <heart>", " beat"), (0.0, 2.0, 1.0), 1),))
    report = html.PairReport("s", ("base", "finetuned"), "From base to finetuned: x < y.",
                             SummaryFacts("base", "finetuned"), (("finetuned", "emerge", 1234),),
                             (html.FateSection("Emerged", "why", "change", (card,)),), "now")
    page = html.render(report)
    parsed = _Collect()
    parsed.feed(page)
    text = "".join(parsed.text)
    assert "script" not in parsed.tags and parsed.urls == []
    assert "From base to finetuned: x < y." in text and "<script> | heart" in text and "1,234" in text
    assert "http" not in page
    assert '<rect width="120"' in page  # the largest bar of its table has the full width
