"""A pair's summary generated through the OpenAI-compatible client against the fake server in the test: the prompt
sent is summary_messages of the facts, the reply is stored with both fingerprints and the facts' hash, and a server
that fails or says nothing stores nothing."""

import pytest

from core import explanations
from core.change_summary import ControlFacts
from core.config import load_config
from core.explain.summary import PROMPT_VERSION, FeatureFact, facts_hash, summary_messages
from factories import study_toml
from openai_server import FakeOpenAI, serve
from precompute.explain.backends import BackendError
from precompute.explain.summary import SUMMARY_MAX_TOKENS, explainer_name, summarize_pair
from summary_facts import FACTS

FINGERPRINTS = {"base": "fp-a", "finetuned": "fp-b", "base_resae": "fp-c"}
PAIR = ("base", "finetuned")


def _config(tmp_path, url: str):
    arms = [{"name": name, "model": "m", "sae_path": f"s/{name}"} for name in ("base", "finetuned")]
    path = tmp_path / "study.toml"
    path.write_text(study_toml(arms, labels_db=str(tmp_path / "labels.duckdb"))
                    + f'\n[explain]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "judge-7b"\nmax_retries = 0\n')
    return load_config(path)


def _stored(config):
    return explanations.current_pair_summary(config.explanations_db, config.name, PAIR, FINGERPRINTS)


def test_a_summary_is_asked_for_and_stored(tmp_path):
    reply = "\n  base#123 rose most (heart); finetuned#45 emerged beyond the control; base#7 is within it.\n"
    fake = FakeOpenAI(answer=lambda body: (reply, {}))
    with serve(fake) as url:
        config = _config(tmp_path, url)
        item = summarize_pair(config, PAIR, FACTS, FINGERPRINTS)
    assert len(fake.requests) == 1
    assert fake.requests[0] == {"model": "judge-7b", "messages": summary_messages(FACTS),
                                "max_tokens": SUMMARY_MAX_TOKENS, "temperature": 0}
    stored = _stored(config)
    assert stored.summary == item.summary == reply.strip()
    assert (stored.fingerprint_a, stored.fingerprint_b, stored.facts_hash) == ("fp-a", "fp-b", facts_hash(FACTS))
    assert stored.explainer == "openai:judge-7b" == explainer_name(config.explain)
    assert stored.prompt_version == PROMPT_VERSION
    assert str(tmp_path / "explanations.duckdb") == config.explanations_db  # beside the labels, not features_db


@pytest.mark.parametrize("server, message", [
    (FakeOpenAI(fail_first=10, fail_status=503), "HTTP 503"),
    (FakeOpenAI(answer=lambda body: ("  \n ", {})), "replied with no summary; nothing stored"),
])
def test_a_failing_or_silent_server_stores_nothing(tmp_path, server, message):
    with serve(server) as url:
        config = _config(tmp_path, url)
        with pytest.raises(BackendError, match=message):
            summarize_pair(config, PAIR, FACTS, FINGERPRINTS)
    assert _stored(config) is None


def test_a_server_that_is_down_is_one_line(tmp_path):
    config = _config(tmp_path, "http://127.0.0.1:9/v1")
    with pytest.raises(BackendError, match="did not answer.*is the server running"):
        summarize_pair(config, PAIR, FACTS, FINGERPRINTS)
    assert _stored(config) is None


def test_the_local_explainer_is_named_without_loading_it(tmp_path):
    config = _config(tmp_path, "http://127.0.0.1:9/v1")
    assert explainer_name(config.explain, "local") == "local:judge-7b"  # LocalChat.load names it so
    assert explainer_name(load_config_default(tmp_path).explain) == "local:SmolLM2-135M-Instruct.Q4_1.gguf"


def load_config_default(tmp_path):
    path = tmp_path / "default.toml"
    path.write_text(study_toml([{"name": "base", "model": "m", "sae_path": "s"}]))
    return load_config(path)


def test_pair_facts_read_the_control_as_the_page_does():
    """Hand-made fates: finetuned#3 emerged (best match 0.2) while every control feature persists at >= 0.96, so it
    alone is beyond the control (q 0); the risers keep their order, fired tokens, the control's change and the
    current explanation; a database without the lens or the divergence stage gives no lens and no rows."""
    import pandas as pd

    from core.database.fact_reads import PairFactReads
    from precompute.explain.summary import pair_facts

    def fates(arm_b, corrs, statuses):
        return pd.DataFrame({"arm": ["base"] * 4 + [arm_b] * 4, "feature": [0, 1, 2, 3] * 2,
                             "status": ["persist"] * 4 + statuses, "match_corr": [0.99] * 4 + corrs,
                             "same_index_corr": [0.99] * 8})
    tables = {
        ("fate_statistics", PAIR): fates("finetuned", [0.99, 0.99, 0.99, 0.2], ["persist"] * 3 + ["emerge"]),
        ("fate_statistics", ("base", "ctrl")): fates("ctrl", [0.98, 0.97, 0.99, 0.96], ["persist"] * 4),
        ("changed_features", "increase"): pd.DataFrame({
            "feature": [5, 2], "change": [0.3, 0.1], "q": [0.001, float("nan")], "fired_text": ["heart | vein", None],
            "top_text": ["x", "logit words"], "control_change": [0.01, 0.2]}),
        ("changed_features", "decrease"): pd.DataFrame(columns=["feature", "change", "q", "fired_text", "top_text",
                                                                "control_change"]),
    }

    def changed(pair, direction, limit, control):
        assert pair == PAIR and control == "ctrl"
        return tables[("changed_features", direction)]

    read = PairFactReads(lens_sites=lambda pair: pd.DataFrame(), lens_tokens=lambda *args: None,
                         changed_features=changed, fate_statistics=lambda pair: tables[("fate_statistics", pair)],
                         top_texts=lambda arm, features: {3: "vein | artery"},
                         divergent_contexts=lambda *args: None, pair_controls=dict)  # divergence: None

    explained = pd.DataFrame({"arm": ["base", "finetuned"], "feature": [5, 3], "explanation": ["hearts", "vessels"]})
    facts = pair_facts(read, PAIR, "ctrl", 0.05, explained)
    assert facts.counts == ControlFacts("ctrl", 1, 1, 0, 0, 0, 0)
    assert facts.emerged == (FeatureFact("finetuned", 3, "vein | artery", q=0.0, explanation="vessels"),)
    assert facts.increased == (FeatureFact("base", 5, "heart | vein", 0.3, 0.001, 0.01, "hearts"),
                               FeatureFact("base", 2, "logit words", 0.1, None, 0.2))
    assert facts.decreased == () and facts.lens == () and facts.rows == ()
