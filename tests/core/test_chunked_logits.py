"""Vocabulary-chunked next-token reads against float64 brute force on the whole logits.

Logits with a wide spread (so the running maximum moves between chunks, and exp overflows without it) and chunk
sizes that do not divide d_vocab (the last chunk shorter); targets in the first, a middle and the last chunk."""

import pytest
import torch

from core.chunked_logits import kl_and_logprobs, log_softmax_at, tensor_chunks, unembed_chunks, vocab_chunk
from core.divergence import next_token_divergence, residual_divergence
from core.hook_reads import final_residual, next_token_loss_sum
from core.loading import NO_CENTRING
from core.models import hooked_transformer_from_hf
from factories import byte_tokenizer
from tiny_models import tiny_hf_model

D_VOCAB = 101  # prime: no chunk size below divides it


def spread_logits(n, seed, scale=40.0):
    generator = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, D_VOCAB, generator=generator, dtype=torch.float64)


def reference(za, zb, targets):
    log_a, log_b = za.log_softmax(-1), zb.log_softmax(-1)
    kl = (log_a.exp() * (log_a - log_b)).sum(-1)
    return kl, log_a.gather(-1, targets[:, None])[:, 0], log_b.gather(-1, targets[:, None])[:, 0]


@pytest.mark.parametrize("chunk", [1, 7, 33, 100, 101, 500])
def test_chunked_kl_and_logprobs_equal_float64_brute_force(chunk):
    za, zb = spread_logits(12, 0), spread_logits(12, 1, scale=5.0)
    zb[3] = za[3]  # a position where the models agree: KL exactly 0
    targets = torch.tensor([0, 50, 100, 7, 99, 1, 2, 64, 33, 34, 66, 67])
    kl, log_a, log_b = kl_and_logprobs(tensor_chunks(za.float(), chunk), tensor_chunks(zb.float(), chunk), targets)
    want_kl, want_a, want_b = reference(za, zb, targets)
    torch.testing.assert_close(kl, want_kl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_a, want_a, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_b, want_b, rtol=1e-5, atol=1e-4)
    assert kl[3] == 0.0
    torch.testing.assert_close(log_softmax_at(tensor_chunks(za.float(), chunk), targets), want_a, rtol=1e-5, atol=1e-4)


def test_small_kl_of_near_identical_logits_keeps_its_size():
    za = spread_logits(6, 2, scale=3.0)
    zb = za + 1e-3 * spread_logits(6, 3, scale=1.0) + 7.0  # a constant shift changes no probability
    kl, _, _ = kl_and_logprobs(tensor_chunks(za.float(), 13), tensor_chunks(zb.float(), 13))
    want, _, _ = reference(za, zb, torch.zeros(6, dtype=torch.long))
    assert (want > 1e-8).all() and (want < 1e-5).all()
    torch.testing.assert_close(kl, want, rtol=0.05, atol=2e-7)


def test_differently_chunked_streams_are_refused():
    za = spread_logits(2, 0).float()
    with pytest.raises(ValueError, match="chunked differently"):
        kl_and_logprobs(tensor_chunks(za, 10), tensor_chunks(za, 11))


def test_vocab_chunk_stays_within_its_budget():
    assert vocab_chunk(2048, 256_000, budget=2**24) == 8192
    assert vocab_chunk(10, 50, budget=2**24) == 50
    assert vocab_chunk(10**9, 50, budget=2**24) == 1


@pytest.fixture(scope="module", params=["LlamaForCausalLM", "Gemma2ForCausalLM"])  # Gemma 2: a logit soft cap
def model(request, tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    byte_tokenizer().save_pretrained(folder)  # TransformerLens re-reads a tokenizer from its name_or_path
    tokenizer = AutoTokenizer.from_pretrained(folder)
    hf = tiny_hf_model(request.param, vocab_size=len(tokenizer))
    hf.config.bos_token_id = tokenizer.bos_token_id
    return hooked_transformer_from_hf(hf, tokenizer, NO_CENTRING, "cpu")


def rows(model, n=3, t=10, seed=0):
    out = torch.randint(3, model.cfg.d_vocab, (n, t), generator=torch.Generator().manual_seed(seed))
    out[:, 0] = 1
    return out


def test_unembed_chunks_give_the_models_logits(model):
    tokens = rows(model)
    with torch.no_grad():
        logits = model(tokens).reshape(-1, model.cfg.d_vocab)
        residual = final_residual(model, tokens).reshape(-1, model.cfg.d_model)
        chunks = list(unembed_chunks(model, residual, chunk=17))
    assert [start for start, _ in chunks] == list(range(0, model.cfg.d_vocab, 17))
    torch.testing.assert_close(torch.cat([z for _, z in chunks], 1), logits, rtol=1e-5, atol=1e-5)


def test_chunked_loss_sum_equals_transformer_lens_loss(model):
    tokens = rows(model, seed=1)
    with torch.no_grad():
        want = model(tokens, return_type="loss", loss_per_token=True).double().sum().item()
        got = next_token_loss_sum(model, final_residual(model, tokens), tokens)
    assert got == pytest.approx(want, rel=1e-5)


def test_residual_divergence_equals_float64_divergence_of_the_logits(model):
    tokens = rows(model, seed=2)
    other = hooked_transformer_from_hf(tiny_hf_model(model.cfg.original_architecture, seed=5,
                                                     vocab_size=model.cfg.d_vocab), model.tokenizer, NO_CENTRING, "cpu")
    with torch.no_grad():
        kl, change = residual_divergence(model, final_residual(model, tokens), other, final_residual(other, tokens),
                                         tokens)
        la, lb = model(tokens)[:, 1:].double().log_softmax(-1), other(tokens)[:, 1:].double().log_softmax(-1)
    want_kl = (la.exp() * (la - lb)).sum(-1)
    following = tokens[:, 2:, None]
    want_change = (lb[:, :-1].gather(-1, following) - la[:, :-1].gather(-1, following))[..., 0]
    torch.testing.assert_close(kl.double(), want_kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(change[:, :-1].double(), want_change, rtol=1e-4, atol=1e-5)
    assert change[:, -1].isnan().all()
    logit_kl, logit_change = next_token_divergence(model(tokens), other(tokens), tokens)
    torch.testing.assert_close(logit_kl, kl, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logit_change, change, rtol=1e-4, atol=1e-5, equal_nan=True)
