"""The LLM summary of a pair, generated on request (the What changed page's button, or `python -m precompute explain
--summary`) with the study's explainer backend and stored in the explanations database (never the features one).

`pair_facts` reads what the What changed page shows from the features database through typed reads
(core.database.fact_reads.PairFactReads: the page passes its cached reads, the command line a connection's);
`summarize_pair` asks the explainer once and saves the reply with the SAEs' fingerprints and the
facts' hash. A backend that fails raises BackendError (one line) and nothing is stored.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from core import database as db
from core import explanations
from core.change_summary import ControlFacts
from core.config import ExplainConfig, StudyConfig
from core.database.fact_reads import PairFactReads, on_connection
from core.diff_control import controlled_counts, controlled_fates
from core.errors import StudyInputError
from core.explain.summary import (PROMPT_VERSION, FeatureFact, LensSite, RowFact, SummaryFacts, facts_hash,
                                  parse_summary, summary_messages)
from precompute.explain.backends import BackendError, ChatBackend, backend_for, model_label

logger = logging.getLogger(__name__)
Read = PairFactReads
SUMMARY_MAX_TOKENS = 400
TOP_FEATURES, TOP_TOKENS, TOP_ROWS = 8, 10, 4
ROW_BEFORE, ROW_AFTER = 24, 6  # tokens of a divergent row shown around its most divergent one
KIND_TEXT = {"first": "first {k} tokens after BOS", "all": "all positions"}


def explainer_name(config: ExplainConfig, backend: str | None = None) -> str:
    """The name a summary will be stored under ("openai:<model>", "local:<file>"), without loading anything."""
    kind = backend or config.backend
    return f"openai:{config.model}" if kind == "openai" else f"local:{model_label(config.model)}"


def database_reader(con: duckdb.DuckDBPyConnection) -> Read:
    """The summary's reads on an open database; None for a missing table."""
    return on_connection(con)


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _lens(read: Read, pair: tuple[str, str]) -> tuple[LensSite, ...]:
    sites = read.lens_sites(pair)
    if sites is None or sites.empty:
        return ()
    out = []
    for site in sites.itertuples():
        if not site.norm > 0:  # the models agree here: the lens has no direction to read
            continue
        tokens = read.lens_tokens(pair, site.hook_name, site.kind, pair[1])
        top = tokens[tokens["direction"] == "top"].head(TOP_TOKENS)
        where = KIND_TEXT[site.kind].format(k=int(site.n_positions))
        out.append(LensSite(f"{site.hook_name} (layer {int(site.layer)}), {where}",
                            tuple((str(t), bool(m)) for t, m in zip(top["token"], top["is_medical"])),
                            int(site.medical_top20_b), float(site.random_medical_top20_b)))
    return tuple(out)


def _explained(explained: pd.DataFrame, arm: str) -> dict[int, str]:
    if explained is None or explained.empty:
        return {}
    mine = explained[explained["arm"] == arm]
    return dict(zip(mine["feature"].astype(int), mine["explanation"]))


def _ranked(read: Read, pair: tuple[str, str], direction: str, control: str | None,
            explained: dict[int, str]) -> tuple[FeatureFact, ...]:
    frame = read.changed_features(pair, direction, TOP_FEATURES, control)
    if frame is None:
        return ()
    return tuple(FeatureFact(pair[0], int(r.feature), _text(r.fired_text) or _text(r.top_text) or "", float(r.change),
                             _float(r.q), _float(r.control_change) if control else None, explained.get(int(r.feature)))
                 for r in frame.itertuples())


def _controlled(read: Read, pair: tuple[str, str], control: str | None, fdr: float,
                explained: dict[int, str]) -> tuple[ControlFacts | None, tuple[FeatureFact, ...]]:
    """The fates beyond the control (as the page's emerged section computes them) and b's emerged features beyond it."""
    if control is None:
        return None, ()
    pair_rows, control_rows = read.fate_statistics(pair), read.fate_statistics((pair[0], control))
    if pair_rows is None or control_rows is None or pair_rows.empty or control_rows.empty:
        return None, ()
    controlled = controlled_fates(pair_rows, control_rows, pair, control, fdr)
    count = controlled_counts(pair_rows, control_rows, controlled, pair, control).set_index(["arm", "status"])
    counts = ControlFacts(control, *(int(count.loc[(pair[1], "emerge"), c]) for c in ("features", "beyond", "control")),
                          *(int(count.loc[(pair[0], "disappear"), c]) for c in ("features", "beyond", "control")))
    emerged = controlled[(controlled["arm"] == pair[1]) & controlled["beyond"] & (controlled["status"] == "emerge")]
    emerged = emerged.sort_values(["q", "match_corr", "feature"]).head(TOP_FEATURES)
    top = read.top_texts(pair[1], tuple(int(f) for f in emerged["feature"])) or {}
    return counts, tuple(FeatureFact(pair[1], int(r.feature), top.get(int(r.feature), ""), q=_float(r.q),
                                     explanation=explained.get(int(r.feature))) for r in emerged.itertuples())


def _rows(read: Read, pair: tuple[str, str]) -> tuple[RowFact, ...]:
    contexts = read.divergent_contexts(pair[0], pair[1], TOP_ROWS)
    if contexts is None:
        return ()
    rows = []
    for ctx in contexts.itertuples():
        tokens, peak = list(ctx.tokens), int(ctx.max_index)
        text = ("".join(tokens[max(0, peak - ROW_BEFORE):peak]) + "<<" + tokens[peak] + ">>"
                + "".join(tokens[peak + 1:peak + 1 + ROW_AFTER])).replace("\n", " ")
        rows.append(RowFact(int(ctx.row_index), float(ctx.mean_kl), text.strip()))
    return tuple(rows)


def pair_facts(read: Read, pair: tuple[str, str], control: str | None, fdr: float,
               explained: pd.DataFrame | None = None) -> SummaryFacts:
    """What the What changed page shows of `pair`, as plain values; `explained`: current explanations (arm, feature,
    explanation), shown beside the features they explain."""
    by_arm_a, by_arm_b = _explained(explained, pair[0]), _explained(explained, pair[1])
    counts, emerged = _controlled(read, pair, control, fdr, by_arm_b)
    return SummaryFacts(pair[0], pair[1], control, _lens(read, pair),
                        _ranked(read, pair, "increase", control, by_arm_a),
                        _ranked(read, pair, "decrease", control, by_arm_a), emerged, counts, _rows(read, pair))


def summarize_pair(config: StudyConfig, pair: tuple[str, str], facts: SummaryFacts, fingerprints: dict[str, str],
                   chat: ChatBackend | None = None, backend: str | None = None) -> explanations.PairSummary:
    """Ask the study's explainer for the pair's summary and store it; BackendError (nothing stored) when the backend
    fails or replies with nothing."""
    missing = [arm for arm in pair if arm not in fingerprints]
    if missing:
        raise StudyInputError(f"no SAE fingerprint for {', '.join(missing)} in the features database: run "
                              "`python -m precompute run` first")
    chat = chat or backend_for(config.explain, backend, config.device)
    reply = chat.complete([summary_messages(facts)], SUMMARY_MAX_TOKENS)[0]
    text = parse_summary(reply)
    if not text:
        raise BackendError(f"{chat.name} replied with no summary; nothing stored")
    item = explanations.PairSummary(pair[0], pair[1], fingerprints[pair[0]], fingerprints[pair[1]], facts_hash(facts),
                                    chat.name, PROMPT_VERSION, text)
    explanations.save_pair_summary(Path(config.explanations_db), config.name, item)
    logger.info("%s -> %s: summary by %s stored in %s", *pair, chat.name, config.explanations_db)
    return item


def summarize_study(config: StudyConfig, backend: str | None = None,
                    device: str | None = None) -> list[explanations.PairSummary]:
    """`explain --summary`: one summary of every declared pair (control pairs are read as controls, not summarised)."""
    target = Path(config.features_db)
    if db.file_schema_version(target) != db.SCHEMA_VERSION:
        raise StudyInputError(f"no current features database at {target}: run `python -m precompute run` first")
    if not config.pairs:
        raise StudyInputError("--summary needs a model diff: a study of two arms or more, or [[pairs]]")
    chat = backend_for(config.explain, backend, device or config.device)
    with db.connect_read_only(target) as con:
        read = database_reader(con)
        fingerprints = dict(con.execute("SELECT arm, sae_fingerprint FROM arms").fetchall())
        roles = read.pair_controls()
        explained = explanations.current_explanations(Path(config.explanations_db), config.name, fingerprints)
        facts = [pair_facts(read, pair, role["control"], config.diff.fdr, explained)
                 for pair, role in roles.items() if not role["controls"]]
    return [summarize_pair(config, (f.arm_a, f.arm_b), f, fingerprints, chat) for f in facts]
