"""Inspect: a planted feature lights exactly its token, KL is zero against itself and moves only where a changed
unembedding moved a probability, "why here" by hand, and an Inspect racing a steering thread gets its solo result."""

import contextlib
import copy
import re
import threading

import pytest
import torch

import core.inspect as inspect_module
import core.steering as steering_module
from core.errors import StudyInputError
from core.inspect import inspect_text, text_ids, why_here
from core.loading import DEFAULT_PROCESSING, LoadedArm, hooked_transformer_from_hf, load_hf_model
from core.steering import SamplingSettings, generate_steered
from dashboard.render import context_html
from factories import build_gpt2_folder, build_sae, byte_tokenizer

TEXT = "the heart and the kidney, the heart"
PLANTED = 0
EMBED_HOOK = "blocks.0.hook_resid_pre"  # token embedding + position embedding: a token's own direction shows here
STEER_HOOK = "blocks.1.hook_resid_pre"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A 2-layer, d_model 32 GPT-2 on a ~300-token byte-level BPE, context 32 (weights std 0.5, as for steering)."""
    folder = build_gpt2_folder(tmp_path_factory.mktemp("inspect") / "model", byte_tokenizer(), n_positions=32,
                               initializer_range=0.5)
    hf, tok = load_hf_model(str(folder))
    return hooked_transformer_from_hf(hf, tok, DEFAULT_PROCESSING, "cpu")


def planted_arm(model, name: str = "base") -> LoadedArm:
    """Feature 0 reads W_E["Ġheart"] at the embedding hook, its bias halfway between the weakest "heart" position
    and the strongest other position of TEXT: it fires on both "heart" tokens and nowhere else."""
    sae = build_sae(d_in=32, d_sae=8, hook_name=EMBED_HOOK)
    heart = model.tokenizer.convert_tokens_to_ids("Ġheart")
    ids = model.to_tokens(TEXT)[0]
    _, cache = model.run_with_cache(ids[None], names_filter=[EMBED_HOOK])
    direction = model.W_E[heart].detach()
    scores = (cache[EMBED_HOOK][0] @ direction)[1:]  # BOS left out
    on_heart = ids[1:] == heart
    low, high = float(scores[on_heart].min()), float(scores[~on_heart].max())
    assert low > high, "the construction needs heart's own direction to separate it"
    with torch.no_grad():
        sae.b_dec.zero_()
        sae.W_enc[:, PLANTED] = direction
        sae.b_enc[PLANTED] = -(low + high) / 2
    return LoadedArm(name, model, sae, EMBED_HOOK, 8, "cpu", DEFAULT_PROCESSING)


def test_a_planted_feature_lights_exactly_its_tokens_in_the_table_and_the_strip(model):
    arm = planted_arm(model)
    result = inspect_text(arm, arm, TEXT)
    hearts = [i for i, token in enumerate(result.tokens) if token == " heart"]
    assert "".join(result.tokens) == TEXT and len(hearts) == 2
    firing = [i for i, (ids, _) in enumerate(result.base.active) if PLANTED in ids]
    assert firing == hearts
    acts = result.base.feature_acts(PLANTED)
    assert [i for i, a in enumerate(acts) if a > 0] == hearts
    for ids, values in result.base.active:  # strongest first
        assert values == sorted(values, reverse=True) and len(ids) == len(values)
    strip = context_html(result.tokens, acts, max(acts))
    alphas = [float(a) for a in re.findall(r"rgba\([^)]*, ([0-9.]+)\)", strip)]
    assert [i for i, a in enumerate(alphas) if a > 0] == hearts


def test_kl_of_a_model_against_itself_is_zero_everywhere(model):
    arm = planted_arm(model)
    result = inspect_text(arm, planted_arm(copy.deepcopy(model), "finetuned"), TEXT)
    assert result.kl == [0.0] * len(result.tokens)
    assert result.logprob_change == [0.0] * (len(result.tokens) - 1) + [None]


def test_kl_is_positive_exactly_where_a_changed_unembedding_moved_its_token(model):
    """The copy's W_U[:, "Ġkidney"] moves along a direction orthogonal to the final (normalised) residual at every
    position but one (possible: 9 positions in 32 dimensions), so "kidney"'s logit, hence its probability and the
    whole distribution, changes at that position only."""
    moved = 2  # token index (BOS left out): "Ġand"
    kidney = model.tokenizer.convert_tokens_to_ids("Ġkidney")
    ids = model.to_tokens(TEXT)
    _, cache = model.run_with_cache(ids, names_filter=["ln_final.hook_normalized"])
    resid = cache["ln_final.hook_normalized"][0].double()  # [T + 1, d_model]
    target = moved + 1  # the same position with BOS counted
    others = torch.cat([resid[:target], resid[target + 1:]])
    q, _ = torch.linalg.qr(others.T)  # orthonormal basis of the other positions' span
    u = resid[target] - q @ (q.T @ resid[target])
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.W_U[:, kidney] += (15.0 * u / (u @ resid[target])).float()  # +15 on kidney's logit at that position
    result = inspect_text(planted_arm(model), planted_arm(changed, "finetuned"), TEXT)
    assert result.kl[moved] > 0.01
    assert all(kl < 1e-6 for i, kl in enumerate(result.kl) if i != moved)
    assert result.logprob_change[moved] < -0.01  # the token that follows ("Ġthe") lost what kidney gained
    assert all(abs(c) < 1e-4 for c in result.logprob_change[:moved] + result.logprob_change[moved + 1:-1])


def test_why_here_pairs_persisting_features_and_counts_the_direct_logit_by_hand(model):
    """Base and fine-tuned read through the same model with SAEs whose features 0..7 are one permutation apart:
    every pair has equal activations (change 0); declaring no partners instead makes every feature stand alone."""
    base = planted_arm(model)
    shuffled = copy.deepcopy(base.sae)
    perm = torch.tensor([3, 0, 1, 2, 7, 4, 5, 6])  # fine-tuned feature j is base feature perm[j]
    with torch.no_grad():
        shuffled.W_enc.copy_(base.sae.W_enc[:, perm])
        shuffled.b_enc.copy_(base.sae.b_enc[perm])
        shuffled.W_dec.copy_(base.sae.W_dec[perm])
    finetuned = LoadedArm("finetuned", model, shuffled, EMBED_HOOK, 8, "cpu", DEFAULT_PROCESSING)
    result = inspect_text(base, finetuned, TEXT)
    pos = result.tokens.index(" heart")
    partners = {int(perm[j]): j for j in range(8)}
    rows = why_here((base, finetuned), result, pos, partners, {j: int(perm[j]) for j in range(8)})
    assert rows and all(abs(r.act_change) < 1e-5 and abs(r.logit_change) < 1e-5 for r in rows)
    assert {(r.base_feature, r.finetuned_feature) for r in rows} <= set(partners.items())
    alone = why_here((base, finetuned), result, pos, {}, {})
    assert len(alone) == 2 * len(rows)
    planted = next(r for r in alone if r.base_feature == PLANTED)
    W_dec = base.sae.W_dec[PLANTED].detach()
    next_token = result.token_ids[pos + 1]
    _, cache = model.run_with_cache(model.to_tokens(TEXT), names_filter=["ln_final.hook_scale"])
    by_hand = (float(result.base.feature_acts(PLANTED)[pos]) * float((W_dec - W_dec.mean()) @ model.W_U[:, next_token])
               / float(cache["ln_final.hook_scale"][0, pos + 1, 0]))
    assert planted.base_logit == pytest.approx(by_hand, rel=1e-4) and planted.finetuned_feature is None


def test_empty_long_and_differently_tokenised_texts_are_one_line(model):
    arm = planted_arm(model)
    with pytest.raises(StudyInputError, match="Type a text"):
        text_ids(arm, arm, "  \n")
    long = " ".join(["the heart"] * 40)
    ids, notice = text_ids(arm, arm, long)
    assert len(ids) == 32 and "cut after token 31" in notice
    assert len(inspect_text(arm, arm, long).tokens) == 31
    other = copy.deepcopy(model)
    other.tokenizer = copy.deepcopy(model.tokenizer)
    other.to_tokens = lambda text, **kwargs: torch.tensor([[0, 1, 2]])  # a tokenizer that reads it otherwise
    with pytest.raises(StudyInputError, match="tokenise this text differently"):
        text_ids(arm, LoadedArm("finetuned", other, arm.sae, EMBED_HOOK, 8, "cpu", DEFAULT_PROCESSING), TEXT)


def inspect_while_steering(arm: LoadedArm, wait: float) -> tuple[object, object, object, object, bool]:
    """A steers (strongly) and, at its first token, waits up to `wait` s for B's Inspect to finish; B starts at
    A's first token. Returns (A alone, B alone, A together, B together, B finished while A was mid-generation)."""
    coefficients = {1: 40.0}
    settings = SamplingSettings(max_new_tokens=8, seed=3)
    alone_a, alone_b = generate_steered(arm, coefficients, "the heart", settings), inspect_text(arm, arm, TEXT)
    a_started, b_done, results, saw = threading.Event(), threading.Event(), {}, []

    def on_a(token: int) -> None:
        if not a_started.is_set():
            a_started.set()
            saw.append(b_done.wait(timeout=wait))

    def run_a() -> None:
        results["a"] = generate_steered(arm, coefficients, "the heart", settings, on_token=on_a)

    def run_b() -> None:
        a_started.wait(timeout=10)
        results["b"] = inspect_text(arm, arm, TEXT)
        b_done.set()

    threads = [threading.Thread(target=run_a), threading.Thread(target=run_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return alone_a, alone_b, results["a"], results["b"], saw[0]


def steer_arm(model) -> LoadedArm:
    return LoadedArm("base", model, build_sae(d_in=32, d_sae=8, hook_name=STEER_HOOK), STEER_HOOK, 8, "cpu",
                     DEFAULT_PROCESSING)


def test_an_inspect_while_another_thread_steers_gets_its_solo_result(model):
    alone_a, alone_b, together_a, together_b, b_finished_mid_steering = inspect_while_steering(steer_arm(model), 0.5)
    assert not b_finished_mid_steering  # the lock made B wait until A's generation was over
    assert together_a == alone_a and together_b == alone_b


def test_without_the_lock_the_inspect_reads_the_steered_model(model, monkeypatch):
    """The control: the same schedule with the lock disabled: B's Inspect runs under A's steering hook."""
    monkeypatch.setattr(steering_module, "model_lock", lambda model: contextlib.nullcontext())
    monkeypatch.setattr(inspect_module, "model_lock", lambda model: contextlib.nullcontext())
    try:
        _, alone_b, _, together_b, b_finished_mid_steering = inspect_while_steering(steer_arm(model), 10)
    finally:
        model.reset_hooks()
    assert b_finished_mid_steering and together_b.base != alone_b.base
