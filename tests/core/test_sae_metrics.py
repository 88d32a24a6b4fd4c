"""SAE quality: the CE losses agree with SAELens's own evals, and the metrics mean what they say."""

import pytest
import torch

from core.loading import DEFAULT_PROCESSING, hooked_transformer_from_hf, load_hf_model
from core.sae_metrics import hook_activations, reconstruction_stats, sae_quality
from factories import build_gpt2_folder, build_sae, byte_tokenizer

HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder = build_gpt2_folder(tmp_path_factory.mktemp("m") / "m", byte_tokenizer())
    hf, tokenizer = load_hf_model(str(folder))
    return hooked_transformer_from_hf(hf, tokenizer, DEFAULT_PROCESSING, "cpu")


def rows(model, n=6, t=16):
    body = torch.randint(1, model.cfg.d_vocab, (n, t - 1))
    return torch.cat([torch.zeros(n, 1, dtype=torch.long), body], dim=1)  # id 0 is <|endoftext|>: BOS only


def test_ce_losses_equal_saelens_get_recons_loss(model):
    from sae_lens.evals import get_recons_loss
    from sae_lens.training.activation_scaler import ActivationScaler

    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    batch = rows(model)
    ours = sae_quality(model, sae, HOOK, batch, batch_size=4)
    theirs = get_recons_loss(sae, model, ActivationScaler(), batch, compute_kl=False, compute_ce_loss=True,
                             ignore_tokens=[0])
    assert ours.ce_loss_clean == pytest.approx(theirs["ce_loss_without_sae"].mean().item(), rel=1e-5)
    assert ours.ce_loss_spliced == pytest.approx(theirs["ce_loss_with_sae"].mean().item(), rel=1e-5)
    assert ours.ce_loss_zero_ablation == pytest.approx(theirs["ce_loss_with_ablation"].mean().item(), rel=1e-5)
    assert abs(ours.ce_loss_spliced - ours.ce_loss_clean) > 1e-3  # the splice really changes the loss


def test_reconstruction_in_the_forward_pass_equals_the_offline_one(model):
    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    batch = rows(model)
    online = sae_quality(model, sae, HOOK, batch, batch_size=4).reconstruction
    offline = reconstruction_stats(sae, hook_activations(model, batch, HOOK))
    assert online.n_tokens == offline.n_tokens == 6 * 15
    for name in ("l0", "explained_variance", "mse", "dead_fraction"):
        assert getattr(online, name) == pytest.approx(getattr(offline, name), rel=1e-4, abs=1e-6)


def test_an_sae_that_reconstructs_exactly_recovers_all_of_the_loss(model):
    """W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x, so splicing changes nothing."""
    sae = build_sae(d_in=32, d_sae=64, hook_name=HOOK)
    eye = torch.eye(32)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    quality = sae_quality(model, sae, HOOK, rows(model), batch_size=4)
    assert quality.reconstruction.explained_variance == pytest.approx(1.0, abs=1e-6)
    assert quality.ce_loss_spliced == pytest.approx(quality.ce_loss_clean, abs=1e-5)
    assert quality.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert quality.reconstruction.l0 == pytest.approx(32, abs=1)  # one of each ±pair fires (x≠0)
