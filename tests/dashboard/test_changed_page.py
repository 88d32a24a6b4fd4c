"""What changed on a pair whose fine-tuned model really differs (tests/pair_study.py with seeded weight noise on arm
B's model): the lens section reads its stored vector, and steering the base model along it writes text; at
strength 0 the steered text is the unsteered one, token for token."""

import pytest
import torch

from dashboard.lens_steer import lens_direction


def test_the_lens_direction_is_rescaled_to_the_typical_norm():
    vector = [3.0, 4.0]  # norm 5
    assert torch.allclose(lens_direction(vector, 2.0, 10.0), torch.tensor([12.0, 16.0]))  # norm 2 × 10
    assert lens_direction(vector, 0.0, 10.0).abs().sum() == 0
    assert lens_direction([0.0, 0.0], 1.0, 10.0).abs().sum() == 0  # no direction: no push


@pytest.fixture(scope="module")
def noisy_study(tmp_path_factory):
    from pair_study import CONTEXT, build_pair_study

    return build_pair_study(tmp_path_factory.mktemp("noisy"), CONTEXT * 12, finetuned_noise=0.2)


def test_what_changed_reads_the_lens_and_steers_along_it(noisy_study, monkeypatch):
    from app_pages import page

    monkeypatch.setenv("SAE_DIFF_CONFIG", noisy_study.source_path)
    at = page("changed")
    assert not at.exception
    text = "\n".join(m.value for m in at.markdown)
    assert text.startswith("From base to finetuned: the mean activation difference (layer ")
    assert "random directions of the same norm" in text
    assert "no control is declared" in text  # this study declares none, and the page says what that means
    tokens = next(d.value for d in at.dataframe if "top" in d.value.columns and "bottom" in d.value.columns)
    assert len(tokens) == 20
    at.text_input(key="changed_lens_prompt").set_value("the heart and the kidney")
    at.button(key="changed_lens_run").click().run()  # the study's 50 new tokens do not fit a 32-token context
    assert not at.exception and "exceed the model's context of 32" in at.error[0].value
    at.number_input(key="changed_lens_tokens").set_value(8)
    at.slider(key="changed_lens_strength").set_value(0.0)
    at.button(key="changed_lens_run").click().run()
    assert not at.exception
    assert any(m.value.startswith("**base + 0× typical norm along the lens**") for m in at.markdown)
    unsteered, steered = (t.value for t in at.text)
    assert unsteered and unsteered == steered  # strength 0: the same seed writes the same text
    at.slider(key="changed_lens_strength").set_value(4.0)
    at.button(key="changed_lens_run").click().run()
    unsteered_again, pushed = (t.value for t in at.text)
    assert unsteered_again == unsteered and pushed != unsteered  # 4× the typical norm moves the text


def _llm_config(study, url: str, name: str) -> str:
    """The study's config with an OpenAI-compatible explainer at `url` (one try per request), as another file."""
    from pathlib import Path

    path = Path(study.source_path).with_name(name)
    path.write_text(Path(study.source_path).read_text()
                    + f'\n[explain]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "fake-llm"\nmax_retries = 0\n')
    return str(path)


def test_the_llm_summary_is_asked_for_stored_and_its_ids_linked(noisy_study, monkeypatch):
    """The button sends What changed's facts (the base SAE's top riser among them) to the study's explainer, stores
    the reply beside the explanations and shows it with its cited ids linked; an id the study has not is flagged, a
    server that is down is one line and stores nothing, and a summary written from other facts says so."""
    import re
    from pathlib import Path

    from app_pages import page
    from core import database as db
    from core import explanations
    from openai_server import FakeOpenAI, serve

    with db.connect_read_only(Path(noisy_study.features_db)) as con:
        riser = int(db.changed_queries.changed_features(con, ("base", "finetuned"), "increase", 1)["feature"][0])
        fingerprints = dict(con.execute("SELECT arm, sae_fingerprint FROM arms").fetchall())
    monkeypatch.setenv("SAE_DIFF_CONFIG", _llm_config(noisy_study, "http://127.0.0.1:9/v1", "down.toml"))
    at = page("changed")
    assert any(c.value.startswith("No summary of this pair yet") for c in at.caption)
    at.button(key="changed_summary_run").click().run()
    assert not at.exception and "did not answer" in at.error[0].value  # the server is down: one line
    assert explanations.current_pair_summary(Path(noisy_study.explanations_db), "pair", ("base", "finetuned"),
                                             fingerprints) is None

    def answer(body):  # cites the first riser the prompt lists, an id past finetuned's 24 features and a bare id
        cited = re.search(r"- (base#\d+): change", body["messages"][1]["content"]).group(1)
        return f"{cited} rose most; finetuned#99 and #3 are made up.", {}

    fake = FakeOpenAI(answer=answer)
    with serve(fake) as url:
        monkeypatch.setenv("SAE_DIFF_CONFIG", _llm_config(noisy_study, url, "llm.toml"))
        at = page("changed")
        assert at.button(key="changed_summary_run").label == "Summarise with openai:fake-llm"
        at.button(key="changed_summary_run").click().run()
    assert not at.exception and len(fake.requests) == 1
    prompt = fake.requests[0]["messages"][1]["content"]
    assert f"- base#{riser}: change +" in prompt and "No control pair is declared" in prompt
    assert any(m.value == f"[base#{riser}](/feature?arm=base&feature={riser}) rose most; finetuned#99 ⚠ and #3 ⚠ "
                          "are made up." for m in at.markdown)
    assert at.warning[0].value == ("Cited, but no feature of this study: finetuned#99 (finetuned has 24 features), "
                                   "#3 (names no arm).")
    assert any(c.value.startswith("By openai:fake-llm · prompt v1 · ") for c in at.caption)
    assert not any(c.value.startswith("Written from other measurements") for c in at.caption)
    explanations.save_explanation(Path(noisy_study.explanations_db), "pair", explanations.Explanation(
        "base", riser, fingerprints["base"], "a riser", "openai:fake-llm", 1))  # the facts now hold an explanation
    at = page("changed")
    assert any(c.value.startswith("Written from other measurements") for c in at.caption)


def test_explain_summary_on_the_command_line_reads_the_pages_facts(noisy_study, capsys):
    """`explain --summary` builds the facts from the features database as the page reads them (every lens site
    with a direction, the top risers in rank order, the most divergent rows) and stores the explainer's reply."""
    from pathlib import Path

    from core import database as db
    from core import explanations
    from core.explain.summary import facts_hash
    from openai_server import FakeOpenAI, serve
    from precompute.cli import main
    from precompute.explain.summary import database_reader, pair_facts

    pair = ("base", "finetuned")
    with db.connect_read_only(Path(noisy_study.features_db)) as con:
        fingerprints = dict(con.execute("SELECT arm, sae_fingerprint FROM arms").fetchall())
        explained = explanations.current_explanations(Path(noisy_study.explanations_db), "pair", fingerprints)
        facts = pair_facts(database_reader(con), pair, None, 0.05, explained)
        sites = db.changed_queries.lens_sites(con, pair)
        risers = db.changed_queries.changed_features(con, pair, "increase", 8)["feature"].tolist()
        rows = db.pair_queries.divergent_contexts(con, *pair, 4)["row_index"].tolist()
    assert len(facts.lens) == int((sites["norm"] > 0).sum()) > 0
    assert all(len(site.tokens) == 10 for site in facts.lens)
    assert [f.feature for f in facts.increased] == risers and all(f.change > 0 for f in facts.increased)
    assert [r.row for r in facts.rows] == rows and all("<<" in r.text for r in facts.rows)
    assert facts.counts is None and facts.emerged == ()  # no control declared
    with serve(FakeOpenAI(answer=lambda body: (f"base#{risers[0]} rose.", {}))) as url:
        assert main(["explain", "--summary", "--config", _llm_config(noisy_study, url, "cli.toml")]) == 0
    assert f"base -> finetuned (openai:fake-llm, stored in {noisy_study.explanations_db}):\nbase#{risers[0]} rose." \
        in capsys.readouterr().out
    stored = explanations.current_pair_summary(Path(noisy_study.explanations_db), "pair", pair, fingerprints)
    assert stored.summary == f"base#{risers[0]} rose." and stored.facts_hash == facts_hash(facts)
