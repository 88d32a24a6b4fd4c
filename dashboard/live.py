"""Live models for Inspect and Steer: each arm's model and SAE loaded once per process and shared by sessions
(core.steering locks them), cached until their files change; the corpus rows and texts they run on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import streamlit as st

from dashboard import reads
from dashboard.study import config_path, mtime, study_config


def loaded_arm(arm_name: str) -> Any:
    """The arm's model and SAE as the config points to them now (a changed path or replaced files load anew)."""
    arm = study_config().arm(arm_name)
    return _load_arm(arm, study_config().device, _folder_stamp(arm.model), _folder_stamp(arm.sae_path))


def _folder_stamp(path: str | None) -> float | None:
    """The newest modification time in a local folder (None for a hub name): part of the cache key."""
    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return None
    return max((mtime(f) for f in folder.iterdir()), default=mtime(folder))


@st.cache_resource(show_spinner="Loading the model and its SAE…", max_entries=4)
def _load_arm(arm: Any, device: str, model_stamp: float | None, sae_stamp: float | None) -> Any:
    from core.loading import load_arm

    return load_arm(arm, device)


@st.cache_resource(show_spinner=False, max_entries=4)
def _decoder_fingerprint(_loaded: Any, arm: Any, model_stamp: float | None, sae_stamp: float | None) -> str:
    from core.loading import decoder_fingerprint

    return decoder_fingerprint(_loaded.sae)


def sae_mismatch(arm_name: str) -> str | None:
    """Why the SAE loaded for `arm_name` must not be steered with this database's numbers, or None when its
    decoder fingerprint is the one the database was computed with (labels take the same care)."""
    arm = study_config().arm(arm_name)
    stamps = (_folder_stamp(arm.model), _folder_stamp(arm.sae_path))
    loaded = _decoder_fingerprint(loaded_arm(arm_name), arm, *stamps)
    stored = reads.study.fingerprints().get(arm_name)
    if loaded == stored:
        return None
    return (f"The SAE of {arm_name} at `{arm.sae_source}` is not the one the features database was computed with "
            f"(decoder fingerprint {loaded[:12]}… loaded, {str(stored)[:12]}… stored): its top tokens, max "
            f"activation and typical norm belong to another SAE. Re-run `python -m precompute run --config "
            f"{config_path()}`, or point the config back to the SAE the database was built from.")


@st.cache_resource(show_spinner="Loading word embeddings…")
def embeddings() -> Any:
    from core.embeddings import load_embeddings

    config = study_config()
    return load_embeddings(config.embeddings.source, Path(config.embeddings.cache_dir))


def row_sources(rows: list[int]) -> list[str]:
    """The corpus source (file name without suffix, or the dataset) each corpus row comes from."""
    from core.corpus import corpus_sources

    ends, names, total = [], [], 0
    for name, n in corpus_sources(study_config().corpus):
        total += n
        ends.append(total)
        names.append(name)
    return [next((name for name, end in zip(names, ends) if row < end), "?") for row in rows]


def example_text(limit: int = 400) -> str:
    """A text to start from: the first line of the study's last corpus file (the demo's held-out medical text),
    cut at a word before `limit` characters; a fixed sentence for a hub corpus."""
    corpus = study_config().corpus
    fallback = "The patient was admitted with chest pain and shortness of breath."
    if corpus.kind != "text_files":
        return fallback
    try:
        with open(corpus.paths[-1], encoding="utf-8") as handle:
            line = next((line.strip() for line in handle if line.strip()), "")
    except OSError:
        return fallback
    return line if len(line) <= limit else line[:limit].rsplit(" ", 1)[0]


@st.cache_data(show_spinner="Running both models…", max_entries=32)
def _inspect(text: str, ids: tuple[int, ...] | None, base: str, finetuned: str, stamps: tuple) -> Any:
    from core.inspect import inspect_ids, inspect_text

    if ids is not None:
        return inspect_ids(loaded_arm(base), loaded_arm(finetuned), ids, text)
    return inspect_text(loaded_arm(base), loaded_arm(finetuned), text)


def _stamps(*names: str) -> tuple:
    arms = [study_config().arm(name) for name in names]
    return tuple((a.model, _folder_stamp(a.model), a.sae_source, _folder_stamp(a.sae_path)) for a in arms)


def inspect(text: str, base: str, finetuned: str, ids: list[int] | None = None) -> Any:
    """core.inspect.inspect_text on the two arms' live models (inspect_ids when the token ids are given: a corpus
    row as the precompute read it), cached per text while their files stay the same."""
    return _inspect(text, None if ids is None else tuple(ids), base, finetuned, _stamps(base, finetuned))


@st.cache_data(show_spinner="Reading the corpus row…", max_entries=64)
def _corpus_row(row: int, arm: str, corpus_key: str, stamps: tuple) -> tuple[list[int], str]:
    from core.corpus import corpus_row
    from core.words import new_token_texts

    tokenizer = loaded_arm(arm).model.tokenizer
    ids = corpus_row(study_config().corpus, tokenizer, row).tolist()
    return ids, "".join(new_token_texts(tokenizer, ids[:1], ids[1:]))


def corpus_row(row: int, arm: str) -> tuple[list[int], str]:
    """Corpus row `row` as `arm`'s tokenizer packs it for the precompute: its token ids (BOS first) and its text
    (BOS left out). Raises StudyInputError for a row the corpus does not have."""
    corpus = study_config().corpus
    files = tuple((path, mtime(Path(path))) for path in corpus.paths)
    return _corpus_row(int(row), arm, json.dumps([str(corpus), files]), _stamps(arm))
