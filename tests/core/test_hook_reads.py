"""The one reader of activations at a hook against a brute-force reference: transformers' own forward pass.

With no weight processing, blocks.1.hook_resid_pre is what transformers calls hidden_states[1] (the output of
block 0). The reader must give exactly those rows, BOS position dropped, and the SAE's encoding of them
relu((x - b_dec) @ W_enc + b_enc) written out by hand."""

import pytest
import torch

from core.hook_reads import HookLosses, activations_at_hook, features_at_hook, hook_loss_sums
from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from factories import build_gpt2_folder, build_sae, byte_tokenizer

HOOK = "blocks.1.hook_resid_pre"
RAW = {key: False for key in DEFAULT_PROCESSING}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = build_gpt2_folder(tmp_path_factory.mktemp("m") / "m", byte_tokenizer())
    hf, tokenizer = load_hf_model(str(folder))
    return hf, hooked_transformer_from_hf(hf, tokenizer, RAW, "cpu")


def token_rows(d_vocab, n=5, t=12):
    generator = torch.Generator().manual_seed(0)
    body = torch.randint(1, d_vocab, (n, t - 1), generator=generator)
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), body], dim=1)


def test_activations_at_the_hook_are_transformers_hidden_states_without_bos(models):
    hf, model = models
    rows = token_rows(model.cfg.d_vocab)
    acts = activations_at_hook(model, HOOK, rows)
    with torch.no_grad():
        reference = torch.stack([hf(row[None], output_hidden_states=True).hidden_states[1][0] for row in rows])
    assert acts.shape == (5, 11, 32)
    torch.testing.assert_close(acts, reference[:, 1:], rtol=1e-5, atol=1e-5)


def test_features_at_the_hook_are_the_sae_formula_on_those_rows(models):
    hf, model = models
    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    rows = token_rows(model.cfg.d_vocab)
    features = features_at_hook(model, sae, HOOK, rows)
    with torch.no_grad():
        x = torch.stack([hf(row[None], output_hidden_states=True).hidden_states[1][0, 1:] for row in rows])
        reference = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    assert features.shape == (5, 11, 64) and (features > 0).any()
    torch.testing.assert_close(features, reference, rtol=1e-4, atol=1e-5)


def test_hook_loss_sums_clean_spliced_and_zero_ablated_against_references(models):
    """An identity splice changes nothing. With the residual stream zeroed before block 1, every position sees
    the same input, so the model predicts one distribution p everywhere: the loss is the mean of -log p[target]."""
    _, model = models
    rows = token_rows(model.cfg.d_vocab, n=6)
    calls = []

    def splice_for(start, stop):
        calls.append((start, stop))
        return lambda act, hook: act

    sums = hook_loss_sums(model, HOOK, rows, batch_size=4, splice_for=splice_for)
    n_predicted = rows.shape[0] * (rows.shape[1] - 1)
    losses = HookLosses(sums["clean"] / n_predicted, sums["spliced"] / n_predicted, sums["zero"] / n_predicted)
    assert calls == [(0, 4), (4, 6)]  # each batch's own rows
    with torch.no_grad():
        clean = model(rows, return_type="loss", loss_per_token=True).mean().item()
    assert losses.clean == pytest.approx(clean, rel=1e-6)
    assert losses.spliced == pytest.approx(clean, rel=1e-6)
    with torch.no_grad():
        zeroed = model.run_with_hooks(rows[:1, :2], fwd_hooks=[(HOOK, lambda act, hook: act * 0)])[0, 0]
    expected = -torch.log_softmax(zeroed, -1)[rows[:, 1:]].mean().item()
    assert losses.zero_ablation == pytest.approx(expected, rel=1e-5)
    assert abs(losses.zero_ablation - losses.clean) > 1e-3
