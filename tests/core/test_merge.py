"""SLERP through mergekit: every merged tensor against a float64 brute force of the formula, the parents exactly
at t = 0 and 1, the linear fallback on colinear rows, and one line for bad input (nothing written)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from core.errors import StudyInputError
from core.merge import MERGEKIT_CONFIG, check_t, slerp_merge
from tests.factories import build_gpt2_folder, byte_tokenizer, perturb_gpt2_folder

pytest.importorskip("mergekit", reason="pip install -r requirements-models.txt")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def brute_slerp_row(a: list[float], b: list[float], t: float) -> list[float]:
    """Shoemake's formula on one row, written out in float64, with mergekit's colinear fallback."""
    dot = sum(x * y for x, y in zip(a, b))
    norm_a, norm_b = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    cos = max(-1.0, min(1.0, dot / ((norm_a if norm_a > 1e-8 else 1) * (norm_b if norm_b > 1e-8 else 1))))
    if abs(cos) > 0.9995:
        return [(1 - t) * x + t * y for x, y in zip(a, b)]
    theta = math.acos(cos)
    wa, wb = math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)
    return [wa * x + wb * y for x, y in zip(a, b)]


def brute_slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """mergekit interpolates each tensor as one flattened vector (biases and matrices alike)."""
    flat = brute_slerp_row(a.double().flatten().tolist(), b.double().flatten().tolist(), t)
    return torch.tensor(flat, dtype=torch.float64).reshape(a.shape)


def test_brute_force_formula_by_hand():
    # Unit vectors 90 degrees apart: halfway is (1, 1) / sqrt(2), on the circle, not the chord's (0.5, 0.5).
    half = brute_slerp_row([1.0, 0.0], [0.0, 1.0], 0.5)
    assert half == pytest.approx([1 / math.sqrt(2), 1 / math.sqrt(2)])
    # Norms 2 and 4: the rows themselves (unnormalised) are interpolated; t = 1/3 of 90 degrees is 30 degrees.
    third = brute_slerp_row([2.0, 0.0], [0.0, 4.0], 1 / 3)
    assert third == pytest.approx([2 * math.sin(math.pi / 3), 4 * math.sin(math.pi / 6)])


@pytest.fixture(scope="module")
def parents(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = build_gpt2_folder(root / "base", byte_tokenizer())
    return perturb_gpt2_folder(base, root / "a", scale=0.3, seed=1), perturb_gpt2_folder(base, root / "b",
                                                                                         scale=0.3, seed=2)


def test_every_merged_tensor_matches_the_formula(parents, tmp_path):
    model_a, model_b = parents
    merged = slerp_merge(model_a, model_b, 0.3, tmp_path / "merged")
    weights_a, weights_b = load_file(model_a / "model.safetensors"), load_file(model_b / "model.safetensors")
    weights = load_file(merged / "model.safetensors")
    assert set(weights) == set(weights_a)
    for name, tensor in weights.items():
        expected = brute_slerp(weights_a[name], weights_b[name], 0.3)
        assert torch.allclose(tensor.double(), expected, atol=2e-5), name
    # Not a plain average: SLERP moves a 2-D weight off the chord.
    name = "transformer.h.0.mlp.c_fc.weight"
    lerp = 0.7 * weights_a[name].double() + 0.3 * weights_b[name].double()
    assert (weights[name].double() - lerp).abs().max() > 1e-3
    yaml_text = (merged / MERGEKIT_CONFIG).read_text()
    assert "merge_method: slerp" in yaml_text and "t: 0.3" in yaml_text and str(model_a) in yaml_text
    assert (merged / "tokenizer.json").is_file() and (merged / "config.json").is_file()


@pytest.mark.parametrize("t, parent", [(0.0, 0), (1.0, 1)])
def test_ends_give_the_parents_exactly(parents, tmp_path, t, parent):
    merged = slerp_merge(*parents, t, tmp_path / "merged")
    expected = load_file(parents[parent] / "model.safetensors")
    weights = load_file(merged / "model.safetensors")
    assert all(torch.equal(weights[name], expected[name]) for name in expected)


def test_colinear_rows_fall_back_to_linear(parents, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_a = parents[0]
    scaled = AutoModelForCausalLM.from_pretrained(str(model_a))
    with torch.no_grad():
        for param in scaled.parameters():
            param.mul_(3.0)  # every tensor of B is 3x A's: cos = 1, so SLERP's sin(theta) would be 0
    scaled.save_pretrained(str(tmp_path / "scaled"))
    AutoTokenizer.from_pretrained(str(model_a)).save_pretrained(str(tmp_path / "scaled"))
    merged = slerp_merge(model_a, tmp_path / "scaled", 0.25, tmp_path / "merged")
    weights_a, weights = load_file(model_a / "model.safetensors"), load_file(merged / "model.safetensors")
    for name, tensor in weights.items():  # (1 - t) a + t 3a = 1.5 a
        assert torch.allclose(tensor, 1.5 * weights_a[name], rtol=1e-5, atol=1e-6), name
        assert torch.isfinite(tensor).all()


@pytest.mark.parametrize("t", [-0.1, 1.5])
def test_t_outside_unit_interval_is_one_line(parents, tmp_path, t):
    with pytest.raises(StudyInputError, match=r"outside \[0, 1\]") as err:
        slerp_merge(*parents, t, tmp_path / "merged")
    assert "\n" not in str(err.value) and not (tmp_path / "merged").exists()
    assert check_t(0.58) == 0.58


def test_different_shapes_or_architectures_are_one_line(parents, tmp_path):
    wider = build_gpt2_folder(tmp_path / "wider", byte_tokenizer(), n_embd=48)
    with pytest.raises(StudyInputError, match="needs the same shapes") as err:
        slerp_merge(parents[0], wider, 0.5, tmp_path / "merged")
    assert "\n" not in str(err.value) and not (tmp_path / "merged").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(StudyInputError, match="GPT2LMHeadModel.*LlamaForCausalLM.*same architecture"):
        slerp_merge(parents[0], other, 0.5, tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "merged.building").exists()


def test_a_failed_merge_leaves_the_old_folder(parents, tmp_path, monkeypatch):
    out = slerp_merge(*parents, 0.5, tmp_path / "merged")
    before = load_file(out / "model.safetensors")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("mergekit.merge.run_merge", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        slerp_merge(*parents, 0.9, out)
    after = load_file(out / "model.safetensors")
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert not (tmp_path / "merged.building").exists()
