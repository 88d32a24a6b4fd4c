"""One arm's features in Neuronpedia's upload layout: the records its importer reads (release, model, source set,
source: one JSON object a line) and the feature and activation lines (gzipped JSON lines in batches).

Field names and defaults are those of Neuronpedia's own export dataclasses
(utils/neuronpedia-utils/neuronpedia_utils/db_models/*.py in hijohnnylin/neuronpedia) as its
convert-saedashboard-to-neuronpedia-export.py fills them from SAEDashboard's output; every field of a record is
written, defaults included, as that script writes `dataclass.__dict__`. What each one holds here:

- pos_str / pos_values, neg_str / neg_values: the decoder projection's top and bottom tokens (`top_tokens`);
- frac_nonzero: the share of corpus tokens the feature fires on; maxActApprox: its max activation (exact here);
- freq_hist_data_*: the histogram of its non-zero activations (log-spaced bins: values are the bins' geometric
  centres); logits_hist_data_*: the histogram of its logit weights over the vocabulary (core.export.weights);
- topkCosSimIndices / Values: nearest features of the same SAE by decoder cosine (`feature_neighbours`);
- correlated_features_* and neuron_alignment_*: core.export.weights (empty when the export ran without weights);
- activations: the top contexts (binMin -1, binMax the top activation, binContains -1, as SAEDashboard marks its
  top group: "TOP ACTIVATIONS, MAX = x") then the interval samples (binMin / binMax the interval's edges;
  binContains unknown: null).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from core.export.weights import Histograms, Ranked

# The fallback creator id of Neuronpedia's converter; an instance with its own users passes --creator-id.
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
FEATURES_PER_BATCH = 1024


@dataclass(frozen=True)
class SourceNames:
    """Where the features go in Neuronpedia: model `model_id`, source `source_id` = "<layer>-<source_set>"."""

    model_id: str
    source_set: str
    layer: int
    creator_id: str
    creator_name: str
    created_at: str  # ISO time, as orjson writes a datetime
    description: str

    @property
    def source_id(self) -> str:
        return f"{self.layer}-{self.source_set}"


@dataclass(frozen=True)
class WeightExtras:
    """What the weights give (None: exported without them; the fields stay empty lists)."""

    logit_histograms: Histograms | None = None
    alignment: Ranked | None = None
    correlated: Ranked | None = None


def layer_of(hook_name: str) -> int:
    """The block number in a TransformerLens hook name ("blocks.3.hook_resid_pre" -> 3); 0 for hooks outside blocks."""
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else 0


def slug(text: str) -> str:
    """A Neuronpedia id: lower-case letters, digits and dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def number(x: Any) -> float | None:
    """A float as JSON keeps it: 7 significant digits (the float32 the database holds), None for NaN."""
    value = float(x)
    return None if np.isnan(value) else float(f"{value:.7g}")


def _numbers(values: Any) -> list[float | None]:
    return [number(v) for v in values]


def metadata_records(names: SourceNames, arm: dict, study: str, n_prompts: int, context_size: int,
                     dataset: str) -> dict[str, dict]:
    """file name -> its one record: release.jsonl, model.jsonl, sourceset.jsonl, source.jsonl."""
    creator = {"creatorId": names.creator_id, "createdAt": names.created_at}
    release = {"name": slug(study), "description": names.description, "creatorName": names.creator_name,
               **creator, "visibility": "PUBLIC", "isNewUi": False, "featured": False,
               "descriptionShort": names.description, "urls": [], "creatorEmail": None,
               "creatorNameShort": names.creator_name, "defaultSourceSetName": names.source_set,
               "defaultSourceId": names.source_id, "defaultUmapSourceIds": []}
    model = {"id": names.model_id, "instruct": False, **creator, "displayNameShort": names.model_id,
             "displayName": f"{arm['model']} ({study}: {arm['arm']})", "tlensId": None, "dimension": int(arm["d_in"]),
             "visibility": "PUBLIC", "defaultSourceSetName": names.source_set, "defaultSourceId": names.source_id,
             "inferenceEnabled": False, "layers": int(arm["n_layers"]), "neuronsPerLayer": int(arm["d_in"]),
             "owner": names.creator_name, "updatedAt": names.created_at, "website": None}
    source_set = {"modelId": names.model_id, "name": names.source_set, **creator, "hasDashboards": True,
                  "visibility": "PUBLIC", "description": f"{arm['hook_name']} - {int(arm['d_sae'])}", "type": "sae",
                  "creatorName": names.creator_name, "urls": [], "creatorEmail": None, "releaseName": slug(study),
                  "defaultOfModelId": None, "defaultRange": 1, "defaultShowBreaks": True, "showDfa": False,
                  "showCorrelated": True, "showHeadAttribution": False, "showUmap": False}
    source = {"id": names.source_id, "modelId": names.model_id, "setName": names.source_set, **creator,
              "hasDashboards": True, "inferenceEnabled": False, "inferenceHosts": [], "saelensConfig": None,
              "saelensRelease": None, "saelensSaeId": None, "hfRepoId": None, "hfFolderId": None,
              "visibility": "PUBLIC", "defaultOfModelId": None, "hasUmap": False, "hasUmapLogSparsity": False,
              "hasUmapClusters": False, "num_prompts": int(n_prompts), "num_tokens_in_prompt": int(context_size),
              "dataset": dataset,
              "notes": f"SAE {arm['sae_source']} at {arm['hook_name']}, decoder fingerprint {arm['sae_fingerprint']}"}
    return {"release.jsonl": release, "model.jsonl": model, "sourceset.jsonl": source_set, "source.jsonl": source}


def _grouped(frame: pd.DataFrame) -> dict[int, pd.DataFrame]:
    return {int(f): rows for f, rows in frame.groupby("feature", sort=False)} if not frame.empty else {}


def _ranked(extra: Ranked | None, feature: int) -> tuple[list[int], list[float | None], list[float | None]]:
    if extra is None:
        return [], [], []
    keep = extra.indices[feature] >= 0
    return ([int(i) for i in extra.indices[feature][keep]], _numbers(extra.values[feature][keep]),
            _numbers(extra.second[feature][keep]))


def feature_records(names: SourceNames, d_sae: int, stats: pd.DataFrame, tokens: pd.DataFrame,
                    histograms: pd.DataFrame, hist_edges: list[float], neighbours: pd.DataFrame,
                    extras: WeightExtras = WeightExtras()) -> list[dict]:
    """One record per feature 0 .. d_sae - 1 (Neuronpedia's Feature), from the arm's bulk reads (core.export.reads)."""
    edges = np.asarray(hist_edges)
    centres = _numbers(np.sqrt(edges[:-1] * edges[1:]))
    by_stats = stats.set_index("feature") if not stats.empty else stats
    by_tokens, by_hist, by_neighbours = _grouped(tokens), _grouped(histograms), _grouped(neighbours)
    logits = extras.logit_histograms
    records = []
    for f in range(d_sae):
        measured = not by_stats.empty and f in by_stats.index
        projection = by_tokens.get(f, tokens.iloc[:0])
        top, bottom = projection[projection["kind"] == "top"], projection[projection["kind"] == "bottom"]
        near = by_neighbours.get(f, neighbours.iloc[:0])
        hist = by_hist.get(f)
        alignment, correlated = _ranked(extras.alignment, f), _ranked(extras.correlated, f)
        records.append({
            "modelId": names.model_id, "layer": names.source_id, "index": str(f), "creatorId": names.creator_id,
            "createdAt": names.created_at, "maxActApprox": number(by_stats.loc[f, "max_act"]) if measured else 0.0,
            "hasVector": False, "vector": [], "vectorLabel": None, "vectorDefaultSteerStrength": 10, "hookName": None,
            "topkCosSimIndices": [int(i) for i in near["neighbour"]], "topkCosSimValues": _numbers(near["cosine"]),
            "neuron_alignment_indices": alignment[0], "neuron_alignment_values": alignment[1],
            "neuron_alignment_l1": alignment[2],
            "correlated_neurons_indices": [], "correlated_neurons_pearson": [], "correlated_neurons_l1": [],
            "correlated_features_indices": correlated[0], "correlated_features_pearson": correlated[1],
            "correlated_features_l1": correlated[2],
            "neg_str": [str(t) for t in bottom["token"]], "neg_values": _numbers(bottom["value"]),
            "pos_str": [str(t) for t in top["token"]], "pos_values": _numbers(top["value"]),
            "frac_nonzero": number(by_stats.loc[f, "frac_nonzero"]) if measured else 0.0,
            "freq_hist_data_bar_heights": [int(c) for c in hist.iloc[0]["counts"]] if hist is not None else [],
            "freq_hist_data_bar_values": centres if hist is not None else [],
            "logits_hist_data_bar_heights": [int(c) for c in logits.heights[f]] if logits is not None else [],
            "logits_hist_data_bar_values": _numbers(logits.values[f]) if logits is not None else [],
            "decoder_weights_dist": [], "sourceSetName": names.source_set})
    return records


def activation_id(names: SourceNames, feature: int, kind: str, interval: Any, rank: int) -> str:
    """A stable 25-character id (Neuronpedia's are cuids): the same export writes the same ids."""
    key = f"{names.model_id}/{names.source_id}/{feature}/{kind}/{interval}/{rank}"
    return "c" + hashlib.sha1(key.encode()).hexdigest()[:24]


def activation_records(names: SourceNames, contexts: pd.DataFrame) -> list[dict]:
    """One record per stored context (Neuronpedia's Activation): the window's tokens and activations."""
    top_max = contexts[contexts["kind"] == "top"].groupby("feature")["max_act"].max().to_dict()
    records = []
    for row in contexts.itertuples(index=False):
        values = [number(v) or 0.0 for v in row.acts]
        peak = int(np.argmax(values)) if values else 0
        top = row.kind == "top"
        records.append({
            "id": activation_id(names, int(row.feature), row.kind, None if top else int(row.interval), int(row.rank)),
            "tokens": [str(t) for t in row.tokens], "index": str(int(row.feature)), "layer": names.source_id,
            "modelId": names.model_id, "maxValue": max(values, default=0.0), "maxValueTokenIndex": peak,
            "minValue": min(values, default=0.0), "values": values, "creatorId": names.creator_id,
            "dataSource": None, "dataIndex": str(int(row.row_index)), "dfaValues": [], "dfaTargetIndex": None,
            "dfaMaxValue": None, "createdAt": names.created_at, "lossValues": [], "logitContributions": None,
            "binMin": -1.0 if top else number(row.interval_low),
            "binMax": number(top_max[row.feature]) if top else number(row.interval_high),
            "binContains": -1.0 if top else None, "qualifyingTokenIndex": int(row.max_index),
            "zIndices": None, "zValues": None})
    return records
