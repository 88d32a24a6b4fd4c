"""Labels and explanations as one JSON file keyed by each arm's decoder fingerprint (core.loading
.decoder_fingerprint), so they go back onto the same SAE's features and never onto another's.

The file holds, per arm, the SAE's fingerprint, d_sae and source; the label events of that SAE (oldest first,
every column core.labels' log keeps but its ids: the annotator column is carried under whatever name the log
gives it) and the current explanations of it. An import checks every arm before it writes anything: an arm the
target study lacks, or whose SAE has another fingerprint, refuses the whole file in one line."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from core.errors import StudyInputError

FORMAT, VERSION = "sae-feature-labels", 1
FILE_NAME = "labels.json"
_NOT_CARRIED = ("id", "study")  # the log's own keys: the importing study gives its own
ANNOTATOR_NAMES = ("annotator", "author")  # what core.labels calls who made a label (either, in either file)


@dataclass(frozen=True)
class ArmSae:
    arm: str
    sae_fingerprint: str
    d_sae: int
    sae_source: str


def _plain(value: Any) -> Any:
    """A JSON value: timestamps as ISO text, NaN / NaT / NA as null, numpy numbers as Python ones."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    if isinstance(value, (pd.Timestamp, datetime)):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    return value


def records(frame: pd.DataFrame, drop: tuple[str, ...] = ()) -> list[dict]:
    columns = [c for c in frame.columns if c not in drop]
    return [{c: _plain(v) for c, v in zip(columns, row)} for row in frame[columns].itertuples(index=False)]


def labels_document(study: str, arms: list[ArmSae], events: pd.DataFrame, explanations: pd.DataFrame) -> dict:
    """The file's content. `events`: core.labels.history of the study; `explanations`: core.explanations
    .current_explanations for these arms' fingerprints. Events of SAEs the arms no longer have are left out."""
    current = {a.arm: a.sae_fingerprint for a in arms}
    mine = events[events["sae_fingerprint"].to_numpy() == events["arm"].map(current).to_numpy()] if len(events) \
        else events
    return {"format": FORMAT, "version": VERSION, "study": study,
            "arms": {a.arm: {"sae_fingerprint": a.sae_fingerprint, "d_sae": a.d_sae, "sae_source": a.sae_source}
                     for a in arms},
            "labels": records(mine, _NOT_CARRIED),
            "explanations": [{**r, "sae_fingerprint": current[r["arm"]]} for r in records(explanations)]}


def parse_document(text: str, where: str) -> dict:
    """The file's content, or one line saying why it is not a labels export."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise StudyInputError(f"{where} is not JSON ({err.msg}, line {err.lineno}): export it with "
                              "`python -m precompute export --format labels`") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise StudyInputError(f"{where} is not a labels export (no \"format\": \"{FORMAT}\")")
    if doc.get("version") != VERSION:
        raise StudyInputError(f"{where} is a labels export of version {doc.get('version')}; this reads {VERSION}")
    return doc


def check_same_saes(doc: dict, target: dict[str, str], where: str) -> None:
    """Every arm the file labels exists in the target (arm -> decoder fingerprint) with the same SAE, or one line."""
    used = {r["arm"] for r in doc["labels"]} | {r["arm"] for r in doc["explanations"]}
    for arm in sorted(used):
        theirs = doc["arms"].get(arm, {}).get("sae_fingerprint")
        if arm not in target:
            raise StudyInputError(f"{where} labels arm {arm!r}, which this study does not have (arms: "
                                  f"{', '.join(target) or 'none'}); nothing imported")
        if theirs != target[arm]:
            raise StudyInputError(f"{where} labels another SAE than arm {arm!r} has (decoder fingerprint "
                                  f"{str(theirs)[:12]}, this study's {target[arm][:12]}): labels attach only to the "
                                  "SAE they were made on; nothing imported")


def label_key(event: dict) -> tuple:
    """What makes two label events the same, whatever the log calls its annotator."""
    who = next((event.get(name) for name in ANNOTATOR_NAMES if event.get(name) is not None), "")
    return (event["arm"], int(event["feature"]), event["sae_fingerprint"], event["label"], event.get("note") or "",
            who or "")


def new_events(events: list[dict], existing: list[dict]) -> list[dict]:
    """The file's events the target does not hold yet (as many times as the file has them more): importing a file
    twice adds nothing the second time."""
    have = Counter(label_key(e) for e in existing)
    out = []
    for event in events:
        key = label_key(event)
        if have[key] > 0:
            have[key] -= 1
        else:
            out.append(event)
    return out
