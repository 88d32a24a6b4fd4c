"""The activation difference lens's parts: the sites it reads, the means against numpy, shards merged against the
single pass, the logit lens of a direction against the `transformers` model's own final norm and unembedding
(a TransformerLens model with folded norms must rank tokens as the raw weights do), the seeded random control,
and the features a planted decoder direction aligns with."""

import pickle

import numpy as np
import pytest
import torch

from core.diff_lens import (DiffLensAccumulator, aligned_features, default_lens_layers, direction_logits, lens_sites,
                            medical_top_counts, random_directions, ranked_tokens)
from core.errors import StudyInputError
from core.hook_reads import activations_at_hook, activations_at_hooks
from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer

SITES = ("blocks.1.hook_resid_pre", "blocks.1.hook_resid_post")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_sites_are_the_hook_then_three_quarter_depth_and_last_by_default():
    assert default_lens_layers(30) == (22, 29) and default_lens_layers(4) == (2, 3) and default_lens_layers(2) == (1,)
    assert lens_sites("blocks.10.hook_resid_pre", 30) == (
        "blocks.10.hook_resid_pre", "blocks.22.hook_resid_post", "blocks.29.hook_resid_post")
    # blocks.1.hook_resid_post is blocks.2.hook_resid_pre: read once, under the SAE's name
    sites = lens_sites("blocks.2.hook_resid_pre", 4, (3, 1, 1))
    assert sites == ("blocks.2.hook_resid_pre", "blocks.3.hook_resid_post")
    with pytest.raises(StudyInputError, match=r"^diff\.lens_layers: \[4\] are not blocks"):
        lens_sites("blocks.2.hook_resid_pre", 4, (1, 4))


def activations(seed: int, n: int = 10, t: int = 7, d: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {site: torch.randn(n, t, d, generator=g) for site in SITES}


def test_means_and_norms_are_numpys_and_shards_merge_to_the_single_pass():
    a, b = activations(0), activations(1)
    whole = DiffLensAccumulator(SITES, 5, k=3)
    whole.update(a, b)
    for mean in whole.result():
        x, y = a[mean.site].double().numpy(), b[mean.site].double().numpy()
        span = slice(0, 3) if mean.kind == "first" else slice(None)
        np.testing.assert_allclose(mean.vector, (y - x)[:, span].mean((0, 1)), rtol=1e-12)
        np.testing.assert_allclose(mean.norm_a, np.linalg.norm(x[:, span], axis=-1).mean(), rtol=1e-6)
        assert mean.n_positions == (3 if mean.kind == "first" else 7) and mean.n_tokens == 10 * mean.n_positions
    parts = []
    for rows in ([0, 1, 2], [3, 4, 5, 6, 7], [8, 9]):
        part = DiffLensAccumulator(SITES, 5, k=3)
        for batch in (rows[:1], rows[1:]):
            part.update({s: v[batch] for s, v in a.items()}, {s: v[batch] for s, v in b.items()})
        parts.append(pickle.loads(pickle.dumps(part)))
    merged = parts[2].merge(parts[0]).merge(parts[1])
    for ours, reference in zip(merged.result(), whole.result()):
        np.testing.assert_allclose(ours.vector, reference.vector, rtol=1e-9, atol=1e-15)
        assert (ours.site, ours.kind, ours.n_tokens) == (reference.site, reference.kind, reference.n_tokens)
    with pytest.raises(StudyInputError, match=r"^diff\.lens_positions is 8 but the rows hold 7 tokens after BOS"):
        DiffLensAccumulator(SITES, 5, k=8).update(a, b)


RAW = {key: False for key in DEFAULT_PROCESSING}


@pytest.fixture(scope="module")
def hf_gpt2(tmp_path_factory):
    folder = build_gpt2_folder(tmp_path_factory.mktemp("lens") / "m", byte_tokenizer())
    hf, tokenizer = load_hf_model(str(folder))
    with torch.no_grad():  # a final norm that is not the identity, so that folding it into W_U matters
        hf.transformer.ln_f.weight.copy_(torch.linspace(0.2, 3.0, 32))
    return hf, tokenizer


@pytest.fixture(scope="module")
def gpt2(hf_gpt2):
    hf, tokenizer = hf_gpt2
    return hf, hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")


@pytest.mark.parametrize("processing", ["folded", "raw"])
def test_a_directions_top_tokens_are_those_of_the_raw_final_norm_and_unembedding(hf_gpt2, processing):
    hf, tokenizer = hf_gpt2
    model = hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING if processing == "folded" else RAW, "cpu")
    vector = torch.randn(32, generator=torch.Generator().manual_seed(3)) + 2.0  # a mean the LayerNorm removes
    w, W = hf.transformer.ln_f.weight.detach(), hf.lm_head.weight.detach()  # [d], [d_vocab, d]
    brute = ((vector - vector.mean()) * w) @ W.T  # LayerNorm centres, scales by w; its bias moves every direction alike
    top, _, bottom, _ = ranked_tokens(direction_logits(model, vector[None])[0], 20)
    assert top.tolist() == torch.argsort(-brute)[:20].tolist()
    assert bottom.tolist() == torch.argsort(brute)[:20].tolist()
    assert torch.allclose(model.W_U, W.T) == (processing == "raw")  # folded: w inside W_U, columns centred


def test_random_directions_are_seeded_and_of_the_given_norm(gpt2):
    _, model = gpt2
    first, again = random_directions(32, 5, 2.5, seed=0), random_directions(32, 5, 2.5, seed=0)
    assert torch.equal(first, again) and not torch.equal(first, random_directions(32, 5, 2.5, seed=1))
    torch.testing.assert_close(first.norm(dim=1), torch.full((5,), 2.5))
    medical = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    logits = direction_logits(model, first)
    medical[torch.argsort(-logits[2])[:4]] = True  # four of direction 2's top 20 marked medical
    counts = medical_top_counts(model, first, medical, 20)
    assert counts[2] == 4 and counts == medical_top_counts(model, again, medical, 20)


def test_aligned_features_find_a_planted_decoder_direction_both_ways():
    sae = build_sae(d_in=32, d_sae=40)
    ids, cos, opposed, opposed_cos = aligned_features(3.0 * sae.W_dec[7].detach(), sae.W_dec, 5)
    assert ids[0] == 7 and cos[0] == pytest.approx(1.0, abs=1e-6) and (np.diff(cos) <= 0).all()
    ids, cos, opposed, opposed_cos = aligned_features(-sae.W_dec[12].detach(), sae.W_dec, 5)
    assert opposed[0] == 12 and opposed_cos[0] == pytest.approx(-1.0, abs=1e-6)


def test_activations_at_several_hooks_are_transformers_hidden_states_in_one_pass(hf_gpt2):
    """blocks.1.hook_resid_pre is hidden_states[1] (block 0's output) without BOS, read without running block 1;
    a deeper hook in the same call is the one-hook reader's."""
    hf, tokenizer = hf_gpt2
    model = hooked_transformer_from_hf(hf, tokenizer, RAW, "cpu")
    rows = torch.cat([torch.zeros(3, 1, dtype=torch.long), torch.randint(1, 250, (3, 9))], dim=1)
    ran = []
    handle = model.blocks[1].register_forward_hook(lambda *args: ran.append(1))
    try:
        only_pre = activations_at_hooks(model, ["blocks.1.hook_resid_pre"], rows)
    finally:
        handle.remove()
    both = activations_at_hooks(model, ["blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"], rows)
    with torch.no_grad():
        hidden = hf(rows, output_hidden_states=True).hidden_states[1][:, 1:]
    assert not ran and only_pre["blocks.1.hook_resid_pre"].shape == (3, 9, 32)
    torch.testing.assert_close(only_pre["blocks.1.hook_resid_pre"], hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both["blocks.1.hook_resid_pre"], hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(both["blocks.1.hook_resid_post"],
                               activations_at_hook(model, "blocks.1.hook_resid_post", rows))
