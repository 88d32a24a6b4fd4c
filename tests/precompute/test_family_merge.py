"""The SLERP sweep on two planted fine-tunes of one tiny base: A learned a counting-up sequence, B a counting-down
one. The ends of the curve are the fine-tunes themselves, the curves cross, and the merge lands at the chosen t."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from core.merge_curve import equal_accuracy_t, next_token_accuracy
from core.merge_curve import CURVE_FILE, read_curve
from precompute.family_merge import merge_at_equal_accuracy
from tests.factories import build_gpt2_folder, byte_tokenizer

pytest.importorskip("mergekit", reason="pip install -r requirements-models.txt")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

UP = torch.stack([torch.arange(s, s + 16) % 40 + 10 for s in range(8)])  # [8, 16]: 10 11 12 ... (mod 40)
DOWN = UP.flip(1)  # ... 12 11 10: the same tokens in the other order


def finetune_copy(base, rows, folder, steps=40):
    model = AutoModelForCausalLM.from_pretrained(str(base))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(input_ids=rows, labels=rows).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_merge")
    base = build_gpt2_folder(root / "base", byte_tokenizer())
    return base, finetune_copy(base, UP, root / "a"), finetune_copy(base, DOWN, root / "b")


def accuracy(folder, rows):
    return next_token_accuracy(AutoModelForCausalLM.from_pretrained(str(folder)), rows)


def test_sweep_crosses_and_merges_at_the_equal_point(family, tmp_path):
    base, model_a, model_b = family
    out = tmp_path / "merge"
    curve = merge_at_equal_accuracy(model_a, model_b, out, UP, DOWN, ("up", "down"), base=base,
                                    ts=[0.0, 0.25, 0.5, 0.75, 1.0])
    # Each fine-tune learned its own sequence and not the other's: the planted curves start and end apart.
    assert curve.accuracy_a[0] == accuracy(model_a, UP) > 0.9 and curve.accuracy_b[0] < 0.5
    assert curve.accuracy_b[-1] == accuracy(model_b, DOWN) > 0.9 and curve.accuracy_a[-1] < 0.5
    assert curve.base_accuracy_a == accuracy(base, UP) and curve.base_accuracy_b == accuracy(base, DOWN)
    chosen = equal_accuracy_t(curve.ts, curve.accuracy_a, curve.accuracy_b)
    assert curve.chosen == chosen and chosen.crossed and 0.0 < chosen.t < 1.0
    stored = read_curve(out)
    assert stored is not None and stored.chosen.t == pytest.approx(chosen.t) and (out / CURVE_FILE).is_file()
    assert f"t: {chosen.t!r}" in (out / "mergekit_config.yml").read_text()
    assert AutoModelForCausalLM.from_pretrained(str(out)) is not None
