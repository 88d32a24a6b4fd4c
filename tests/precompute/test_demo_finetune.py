"""The fine-tune adapts or stops (issue 26): the learning-rate check picks a rate whose held-out loss falls and
refuses when none does; the early stop fires on a rising held-out curve and keeps the best weights; a fine-tune that
made its own domain worse is said in one line. On a bigram model whose losses can be written down."""

import math

import pytest
import torch

from core.config import DemoRecipe
from core.errors import StudyInputError
from tiny_models import Bigram
from precompute.demo import finetune, lm

pytestmark = pytest.mark.usefixtures("one_torch_thread")
V = 6


def markov_rows(n_rows: int, seed: int) -> torch.Tensor:
    """Rows [n, 16] from a fixed random bigram chain over V tokens (each row of its transition matrix puts mass on
    every token, so no prediction can be certain)."""
    transitions = torch.softmax(2.0 * torch.randn(V, V, generator=torch.Generator().manual_seed(0)), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    rows = torch.zeros(n_rows, 16, dtype=torch.long)
    for t in range(1, 16):
        rows[:, t] = torch.multinomial(transitions[rows[:, t - 1]], 1, generator=generator).squeeze(1)
    return rows


def recipe(**fields) -> DemoRecipe:
    return DemoRecipe(**{"finetune_lr": 0.01, "batch_size": 8, "finetune_lr_check_steps": 4, **fields})


def test_pick_lr_takes_the_lowest_loss_among_those_that_fell():
    assert finetune.pick_lr(2.0, {1e-4: 1.99, 1e-3: 1.5, 1e-2: 2.6}) == 1e-3
    assert finetune.pick_lr(2.0, {1e-3: 2.0, 1e-2: float("nan"), 1e-1: 7.0}) is None  # equal is no fall, NaN never


def test_the_lr_check_picks_the_rate_whose_heldout_loss_falls():
    """Uniform start (loss log V = 1.792); Adam's first steps move every logit by about the learning rate, so at
    0.01 the held-out loss falls a little and at 30 the logits jump to +-30 and it rises to tens of nats."""
    rows, heldout = markov_rows(64, seed=1), markov_rows(16, seed=2)
    base = Bigram(torch.zeros(V, V))
    lr, losses, start = finetune.check_lr(base, rows, None, heldout, recipe(finetune_lr_factors=(1.0, 3000.0)),
                                          seed=0, device="cpu")
    assert start == pytest.approx(math.log(V), abs=1e-6)
    assert losses[0.01] < start < 10 < losses[30.0]
    assert lr == 0.01
    assert torch.equal(base.table.detach(), torch.zeros(V, V))  # the check trains copies


def test_the_lr_check_stops_the_build_when_no_rate_lowers_heldout_loss():
    rows, heldout = markov_rows(64, seed=1), markov_rows(16, seed=2)
    with pytest.raises(StudyInputError, match=r"rose from 1\.792 at every learning rate tried \(10 -> .*set a lower"):
        finetune.check_lr(Bigram(torch.zeros(V, V)), rows, None, heldout,
                          recipe(finetune_lr_factors=(1000.0, 3000.0)), seed=0, device="cpu")


def test_early_stop_fires_after_patience_checks_without_a_new_best():
    stop = finetune.EarlyStop(patience=2)
    assert [stop.update(step, loss) for step, loss in enumerate([4.0, 3.0, 3.5, 2.9, 3.0, 3.1], 1)] == \
        [False, False, False, False, False, True]
    assert (stop.best, stop.best_step) == (2.9, 4)


def test_the_fine_tune_stops_on_a_rising_heldout_curve_and_keeps_its_best_weights(monkeypatch):
    """Planted held-out losses (start 5.0, then after steps 1, 2, ...: 4, 3, 3.5, 3.6, ...): with a check every step
    and patience 2 the run stops after step 4 of 8 and keeps the weights it had after step 2."""
    curve = iter([5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0])
    monkeypatch.setattr(lm, "mean_loss", lambda *args, **kwargs: next(curve))
    rows = {"finetune": markov_rows(64, seed=1), "finetune_check": markov_rows(16, seed=2)}
    base = Bigram(torch.randn(V, V, generator=torch.Generator().manual_seed(3)))
    settings = recipe(finetune_lr_factors=(), finetune_check_every=1, finetune_patience=2, finetune_lr=0.05)
    model, record = finetune.finetune(base, None, rows, settings, seed=0, device="cpu")
    assert (record.steps, record.planned_steps, record.stopped_early, record.best_step) == (4, 8, True, 2)
    assert record.heldout_loss == [(1, 4.0), (2, 3.0), (3, 3.5), (4, 3.6)]
    assert (record.start_loss, record.final_loss, record.lr, record.lr_check) == (5.0, 3.0, 0.05, {})
    two_steps = Bigram(base.table.detach())
    lm.train_lm(two_steps, rows["finetune"], 0.05, 8, seed=1, device="cpu", desc="", max_steps=2)
    assert torch.equal(model.table.detach(), two_steps.table.detach())


def test_a_fine_tune_that_raised_its_domain_perplexity_is_said_and_one_that_lowered_it_is_not():
    record = {"lr": 2e-4, "steps": 8, "planned_steps": 8}
    rose = finetune.domain_warning({"base": {"medical": 32.5}, "finetuned": {"medical": 49.0}}, record)
    assert rose.startswith("WARNING: the fine-tune raised held-out medical perplexity by 50.8% (32.5 -> 49.0) "
                           "(learning rate 0.0002, 8 of 8 steps)")
    assert finetune.domain_warning({"base": {"medical": 32.5}, "finetuned": {"medical": 20.0}}) is None
