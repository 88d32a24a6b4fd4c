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
