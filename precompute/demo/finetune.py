"""The recipe's fine-tune, adapted to the model or stopped (issue 26): a learning rate planned for one model raised
another's held-out medical perplexity by 51% and nothing noticed.

Before the run, each finetune_lr x factor trains a few steps on a copy of the base model and the one whose held-out
loss falls most is used (none falling stops the build in one line). During the run, held-out loss is measured
every few steps; the run stops once it has not reached a new best for `patience` checks, and the best weights are
kept. The held-out rows are medical training text the fine-tune never trains on (not the evaluation rows, whose
perplexity the build reports)."""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

import torch

from core.boundaries import special_token_ids
from core.config import DemoRecipe
from core.errors import StudyInputError
from precompute.demo import lm

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FinetuneRecord:
    """What the fine-tune did, for the manifest (`manifest["finetune"]`); losses in nats per token."""

    lr: float  # the learning rate the run used
    lr_check: dict[str, float]  # learning rate -> held-out loss after the check's steps ({} when not checked)
    start_loss: float  # the base model's held-out loss
    heldout_loss: list[tuple[int, float]]  # (steps done, held-out loss) at each check of the run
    steps: int  # steps run
    planned_steps: int
    stopped_early: bool
    best_step: int  # the steps done when the kept weights were saved (== steps without an early stop)
    final_loss: float  # held-out loss of the kept weights


def pick_lr(start_loss: float, losses: dict[float, float]) -> float | None:
    """The learning rate whose held-out loss after the check fell most below `start_loss`; None when none fell
    (a NaN loss never falls)."""
    fell = {lr: loss for lr, loss in losses.items() if math.isfinite(loss) and loss < start_loss}
    return min(fell, key=lambda lr: (fell[lr], lr)) if fell else None


class EarlyStop:
    """Stop when `patience` checks in a row found no held-out loss below the best so far; remembers the best."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = math.inf
        self.best_step = 0
        self.since_best = 0

    def update(self, step: int, loss: float) -> bool:
        """Record the held-out loss after `step` steps; True when the run should stop."""
        if loss < self.best:
            self.best, self.best_step, self.since_best = loss, step, 0
            return False
        self.since_best += 1
        return self.patience > 0 and self.since_best >= self.patience


def check_lr(base: Any, rows: torch.Tensor, labels: torch.Tensor | None, heldout: torch.Tensor, recipe: DemoRecipe,
             seed: int, device: str) -> tuple[float, dict[float, float], float]:
    """(learning rate to use, {lr: held-out loss after the check}, the base model's held-out loss). Each candidate
    trains recipe.finetune_lr_check_steps steps at a constant rate on a copy of `base`, over the run's first rows."""
    start = lm.mean_loss(base, heldout, device, recipe.batch_size)
    if not recipe.finetune_lr_factors or recipe.finetune_lr_check_steps < 1:
        return recipe.finetune_lr, {}, start
    losses: dict[float, float] = {}
    for factor in recipe.finetune_lr_factors:
        lr = recipe.finetune_lr * factor
        trial = copy.deepcopy(base)
        lm.train_lm(trial, rows, lr, recipe.batch_size, seed, device, f"fine-tune lr check {lr:.2g}", labels=labels,
                    max_steps=recipe.finetune_lr_check_steps, constant_lr=True)
        losses[lr] = lm.mean_loss(trial, heldout, device, recipe.batch_size)
        del trial
    chosen = pick_lr(start, losses)
    tried = ", ".join(f"{lr:.2g} -> {loss:.3f}" for lr, loss in losses.items())
    if chosen is None:
        raise StudyInputError(
            f"demo.finetune_lr: held-out medical loss rose from {start:.3f} at every learning rate tried ({tried}, "
            f"{recipe.finetune_lr_check_steps} steps each); set a lower demo.finetune_lr or other "
            "demo.finetune_lr_factors")
    logger.info("fine-tune learning rate %.3g (held-out loss %.3f at start; after %d steps: %s)", chosen, start,
                recipe.finetune_lr_check_steps, tried)
    return chosen, losses, start


def finetune(base: Any, tokenizer: Any, rows: dict[str, torch.Tensor], recipe: DemoRecipe, seed: int,
             device: str) -> tuple[Any, FinetuneRecord]:
    """A copy of `base` after (at most) one epoch over rows["finetune"] at the checked learning rate, stopped early
    when held-out loss on rows["finetune_check"] stops falling (the best weights kept); on text tokens only when
    recipe.finetune_text_only."""
    train, heldout = rows["finetune"], rows["finetune_check"]
    labels = lm.text_labels(train, special_token_ids(tokenizer)) if recipe.finetune_text_only else None
    lr, lr_losses, start = check_lr(base, train, labels, heldout, recipe, seed + 1, device)
    model = copy.deepcopy(base)
    stop = EarlyStop(recipe.finetune_patience)
    curve: list[tuple[int, float]] = []
    best_state: dict[str, torch.Tensor] | None = None

    def after_step(done: int) -> bool:
        nonlocal best_state
        if recipe.finetune_check_every < 1 or (done % recipe.finetune_check_every and done != planned):
            return False
        loss = lm.mean_loss(model, heldout, device, recipe.batch_size)
        curve.append((done, loss))
        halt = stop.update(done, loss)
        if stop.best_step == done:
            best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        return halt

    planned = max(1, train.shape[0] // recipe.batch_size)
    losses = lm.train_lm(model, train, lr, recipe.batch_size, seed + 1, device, "fine-tune", labels=labels,
                         after_step=after_step)
    stopped = len(losses) < planned
    if best_state is not None and stop.best_step != len(losses):
        model.load_state_dict(best_state)
        logger.info("fine-tune: held-out loss rose after step %d; kept its weights (%d of %d steps run)",
                    stop.best_step, len(losses), planned)
    final = stop.best if curve else lm.mean_loss(model, heldout, device, recipe.batch_size)
    record = FinetuneRecord(lr=lr, lr_check={f"{k:.6g}": v for k, v in lr_losses.items()}, start_loss=start,
                            heldout_loss=curve, steps=len(losses), planned_steps=planned, stopped_early=stopped,
                            best_step=stop.best_step if curve else len(losses), final_loss=final)
    return model, record


def domain_warning(perplexity: dict[str, dict[str, float]], record: dict[str, Any] | None = None) -> str | None:
    """One line when the fine-tune made its own domain worse (held-out medical perplexity rose), else None; the
    build prints it last and stores it as manifest["finetune_warning"], which the Overview shows."""
    base, tuned = perplexity["base"]["medical"], perplexity["finetuned"]["medical"]
    if tuned <= base:
        return None
    how = "" if record is None else (f" (learning rate {record['lr']:.2g}, {record['steps']} of "
                                     f"{record['planned_steps']} steps)")
    return (f"WARNING: the fine-tune raised held-out medical perplexity by {100 * (tuned / base - 1):.1f}% "
            f"({base:.1f} -> {tuned:.1f}){how}: the fine-tuned arm is worse at its own domain; read its "
            "differences as damage, not learning, or change demo.finetune_lr / finetune_tokens and rebuild")
