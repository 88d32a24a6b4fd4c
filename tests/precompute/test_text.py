"""The real text sources and their stable held-out split."""

from precompute.demo.text import is_heldout, iter_general_texts, iter_medical_texts, split_domain


def test_medical_text_is_hpo_prose_without_citations():
    texts = [t for _, t in zip(range(500), iter_medical_texts())]
    assert texts[:2] == ["Root of all terms in the Human Phenotype Ontology.",  # a comment: line
                         "Deviation from the norm of height with respect to that which is expected according to age "
                         "and gender norms."]  # a def: line, its [orcid] citation stripped
    assert not any("orcid" in t or t.endswith('"') for t in texts)


def test_general_text_is_gcide_definitions():
    texts = [t for _, t in zip(range(2000), iter_general_texts())]
    assert all(len(t.split()) >= 4 for t in texts)
    assert any("alphabet" in t for t in texts)


def test_split_is_stable_deduplicated_and_near_the_share():
    docs = [f"document number {i} about something" for i in range(4000)]
    split = split_domain(iter(docs + docs[:100]), 0.1)
    assert len(split.train) + len(split.heldout) == 4000  # the 100 repeats are dropped
    assert 320 < len(split.heldout) < 480  # 10% of 4,000 within ~4 standard deviations
    assert split_domain(iter(docs), 0.1).heldout == split.heldout
    assert all(is_heldout(doc, 0.1) for doc in split.heldout)
    assert not any(is_heldout(doc, 0.1) for doc in split.train)


def test_gcide_markup_is_removed():
    texts = list(iter_general_texts())
    assert not any("<--" in t or "{2}" in t for t in texts)
    assert "a fetus which has been aborted; same as abortion." in texts
