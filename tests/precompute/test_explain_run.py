"""`python -m precompute explain` end to end on a tiny planted study (feature 0 fires on " heart" only), against
the OpenAI-compatible test server: explanations land one by one, an interrupted run keeps them, a re-run skips
them, and the scores come from the feature's real activations."""

import re
import shutil

import pytest

from core import explanations
from core.config import load_config
from core.explain import PROMPT_VERSION
from core.loading import decoder_fingerprint
from explain_study import PLANTED, build_explain_study
from openai_server import FakeOpenAI, serve
from precompute.cli import main
from precompute.explain.backends import OpenAIChat
from precompute.explain.run import explain_study


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return build_explain_study(tmp_path_factory.mktemp("explain"))


def heart_answers(body):
    """Explains every feature as the word heart; as a judge, says yes when the text asked about has " heart"."""
    question = body["messages"][-1]["content"]
    if "What does the feature detect" in question:
        return "Explanation: the word heart", {}
    asked = question.split("Does the last token, ")[-1] if "last token" in question else question.split("Text: ")[-1]
    yes = bool(re.search(r"\bheart\b", asked))
    return ("Yes" if yes else "No"), ({"Yes": 0.9, "No": 0.1} if yes else {"Yes": 0.1, "No": 0.9})


def _fresh_copy(study, tmp_path, url):
    """The study with its own explanations file and the test server as backend."""
    config = tmp_path / "study.toml"
    text = study.read_text().replace("[study]\n", f'[study]\nexplanations_db = "{tmp_path / "e.duckdb"}"\n')
    config.write_text(text + f'\n[explain]\nbackend = "openai"\nbase_url = "{url}"\nmodel = "fake"\n'
                      f'concurrency = 2\n')
    return config


def test_the_planted_feature_is_explained_and_scored_from_its_real_activations(study, tmp_path):
    fake = FakeOpenAI(answer=heart_answers)
    with serve(fake) as url:
        config = _fresh_copy(study, tmp_path, url)
        assert main(["explain", "--config", str(config), "--features", f"{PLANTED},1", "--no-progress"]) == 0
    loaded = load_config(config)
    shown = explanations.current_explanations(loaded.explanations_db, loaded.name,
                                              {"base": _fingerprint(loaded)}).set_index("feature")
    planted = shown.loc[PLANTED]
    assert planted["explanation"] == "the word heart" and planted["explainer"] == "openai:fake"
    assert planted["prompt_version"] == PROMPT_VERSION
    assert (planted["n_activating"], planted["n_non_activating"]) == (5, 5)
    # predicted 9 on each " heart", 1 elsewhere, against the real activations (0 elsewhere, on " heart" a value
    # that varies with the position): r = 1 only if those were all equal
    assert 0.8 < planted["simulation"] < 1.0 and planted["detection"] == 1.0
    # feature 1 fires on most tokens, not on " heart" alone: the same explanation explains it far worse, and
    # with no corpus window where it is quiet there is nothing to detect it against (NaN, never a made-up 0.5)
    feature_1 = shown.loc[1]
    assert feature_1["simulation"] < 0.5 and feature_1["n_non_activating"] == 0
    assert feature_1["detection"] != feature_1["detection"]


class Interrupted(BaseException):
    """Ctrl-C in the middle of a run."""


class StopAfter(OpenAIChat):
    def __init__(self, url, completions):
        super().__init__(url, "fake", concurrency=2)
        self.left = completions
        self.asked = []

    def complete(self, conversations, max_tokens):
        if self.left == 0:
            raise Interrupted
        self.left -= 1
        self.asked.append(len(conversations))
        return super().complete(conversations, max_tokens)


def test_an_interrupted_run_keeps_what_it_finished_and_a_rerun_skips_it(study, tmp_path):
    with serve(FakeOpenAI(answer=heart_answers)) as url:
        config = load_config(_fresh_copy(study, tmp_path, url))
        first = StopAfter(url, completions=1)  # the first chunk of 2 features, then Ctrl-C
        with pytest.raises(Interrupted):
            explain_study(config, "0,1,2,3", show_progress=False, chat=first)
        kept = explanations.explained_features(config.explanations_db, config.name, "base", _fingerprint(config),
                                               "openai:fake", PROMPT_VERSION)
        assert kept == {0, 1}
        again = StopAfter(url, completions=10)
        report = explain_study(config, "0,1,2,3", show_progress=False, chat=again)
    assert again.asked == [2]  # only features 2 and 3 were asked for
    assert report.explained == {"base": 2} and report.skipped == {"base": 2}
    assert len(explanations.current_explanations(config.explanations_db, config.name,
                                                 {"base": _fingerprint(config)})) == 4


def test_a_replaced_sae_is_refused_and_bad_input_is_one_line(study, tmp_path, capsys):
    with serve(FakeOpenAI(answer=heart_answers)) as url:
        config = _fresh_copy(study, tmp_path, url)
        assert main(["explain", "--config", str(config), "--features", "99", "--no-progress"]) == 2
        assert "--features" in capsys.readouterr().err
        sae = study.parent / "sae"
        shutil.copytree(sae, tmp_path / "sae_copy")
        from sae_lens import SAE
        other = SAE.load_from_disk(str(tmp_path / "sae_copy"))
        other.W_dec.data += 0.01
        other.save_model(str(tmp_path / "sae_copy"))
        config.write_text(config.read_text().replace(str(sae), str(tmp_path / "sae_copy")))
        assert main(["explain", "--config", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the one the features database was computed with" in err[0]


def _fingerprint(config):
    from core.loading import load_sae

    return decoder_fingerprint(load_sae(config.arms[0], "cpu"))
