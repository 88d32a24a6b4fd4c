"""What changed's last section: an LLM summary of the pair, written on request by the study's explainer from the
facts the page shows (precompute.explain.summary) and stored in the explanations database, never the features one.
Cited feature ids become links to their Feature page; ids the study has not are flagged."""

from __future__ import annotations

import re
from pathlib import Path

import streamlit as st

from core import explanations
from core.database.fact_reads import PairFactReads
from core.errors import StudyInputError
from core.explain.summary import CITATION, PROMPT_VERSION, cited_features, facts_hash
from dashboard import data, place, reads, study
from dashboard import state_keys as keys


def _reads() -> PairFactReads:
    """The page's cached reads, for precompute.explain.summary.pair_facts."""
    return PairFactReads(
        lens_sites=reads.changed.lens_sites, lens_tokens=reads.changed.lens_tokens,
        changed_features=reads.changed.changed_features, fate_statistics=reads.diff.fate_statistics,
        top_texts=reads.features.top_texts, divergent_contexts=reads.diff.divergent_contexts,
        pair_controls=reads.pairs.pair_controls)


def linked_summary(text: str, widths: dict[str, int]) -> str:
    """`text` with every known `arm#id` a link to its Feature page and every other one marked ⚠."""
    def link(match: re.Match) -> str:
        arm, feature = match.group(1), int(match.group(2))
        if arm in widths and feature < widths[arm]:
            return f"[{arm}#{feature}]({place.feature_url(arm, feature)})"
        return f"{match.group(0)} ⚠"
    return CITATION.sub(link, text)


def unknown_text(text: str, widths: dict[str, int]) -> str | None:
    """One line naming the cited ids that are no feature of this study, or None."""
    unknown = [c for c in cited_features(text, widths) if not c.known]
    if not unknown:
        return None
    why = [f"{c.arm}#{c.feature} ({c.arm} has {widths[c.arm]:,} features)" if c.arm in widths else
           f"{c.arm}#{c.feature} (no arm {c.arm})" if c.arm else f"#{c.feature} (names no arm)" for c in unknown]
    return "Cited, but no feature of this study: " + ", ".join(why) + "."


def summary_section(pair: tuple[str, str], control: str | None, fdr: float) -> None:
    """The stored summary of `pair` for the current SAEs, and a button that asks the explainer for a new one."""
    from precompute.explain.backends import BackendError
    from precompute.explain.summary import explainer_name, pair_facts, summarize_pair

    config = study.study_config()
    st.subheader("Summary by an LLM")
    fingerprints, widths = reads.study.fingerprints(), reads.study.widths()
    facts = pair_facts(_reads(), pair, control, fdr, data.current_explanations())
    name = explainer_name(config.explain)
    if st.button(f"Summarise with {name}", key=keys.CHANGED_SUMMARY_RUN,
                 help="Sends the measurements on this page to the study's explainer ([explain] in the config) and "
                      f"stores its reply in {config.explanations_db}."):
        with st.spinner(f"Asking {name}…"):
            try:
                summarize_pair(config, pair, facts, fingerprints)
            except (BackendError, StudyInputError, explanations.ExplanationWriteError, OSError) as err:
                st.error(f"No summary: {err}")
    stored = explanations.current_pair_summary(Path(config.explanations_db), config.name, pair, fingerprints)
    if stored is None:
        st.caption("No summary of this pair yet. The explainer reads the figures above, cites feature ids and is told "
                   "to say which claims are within the control; nothing here is checked by it.")
        return
    st.markdown(linked_summary(stored.summary, widths))
    when = f"{stored.created_at:%Y-%m-%d %H:%M}" if stored.created_at else "?"
    st.caption(f"By {stored.explainer} · prompt v{stored.prompt_version} · {when}. An LLM's reading of the figures "
               "above: open the cited features before relying on it.")
    if stored.facts_hash != facts_hash(facts) or stored.prompt_version != PROMPT_VERSION:
        st.caption("Written from other measurements or another prompt than this page's now (the study was re-run or "
                   "explanations were added since): summarise again for a current one.")
    flagged = unknown_text(stored.summary, widths)
    if flagged:
        st.warning(flagged, icon="⚠️")
