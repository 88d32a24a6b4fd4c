"""Train and evaluate the demo's GPT-2-architecture language models (transformers `GPT2LMHeadModel`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from tqdm.auto import tqdm

from core import token_kinds
from core.config import DemoRecipe

KIND_NAMES = ("all", "text", "separator", "first")


def gpt2_config(recipe: DemoRecipe, tokenizer: object) -> object:
    """A small GPT-2 config; tied embeddings and the GPT-2 activation, so the real-study code applies as is."""
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=recipe.n_positions,
        n_embd=recipe.n_embd,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        architectures=["GPT2LMHeadModel"],
    )


def train_lm(model: torch.nn.Module, rows: torch.Tensor, lr: float, batch_size: int, seed: int, device: str,
             desc: str, labels: torch.Tensor | None = None, max_steps: int | None = None, constant_lr: bool = False,
             after_step: Callable[[int], bool] | None = None) -> list[float]:
    """One epoch over `rows` [n, ctx] in a seeded order; AdamW (0.9, 0.95), wd 0.1, warm-up then cosine (or
    `constant_lr`). `labels` [n, ctx] (default: the rows) are the targets, -100 where a token is not in the loss
    (text_labels). `max_steps`: stop after this many of the epoch's steps. `after_step(steps_done)` is called after
    each step; True stops the run there (the fine-tune's early stop).

    Returns the loss of each step run (nats per token)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(rows.shape[0], generator=generator)
    n_steps = max(1, rows.shape[0] // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, n_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, (lambda step: 1.0) if constant_lr else (
        lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / n_steps))))
    model.to(device).train()
    losses: list[float] = []
    bar = tqdm(range(min(n_steps, max_steps or n_steps)), desc=desc, unit="step", leave=False)
    for step in bar:
        picked = order[step * batch_size:(step + 1) * batch_size]
        batch = rows[picked].to(device)
        targets = batch if labels is None else labels[picked].to(device)
        loss = model(input_ids=batch, labels=targets).loss  # fp32: bf16 autocast was ~15x slower on this CPU
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if after_step is not None and after_step(step + 1):
            break
    model.eval()
    return losses


@torch.no_grad()
def mean_loss(model: torch.nn.Module, rows: torch.Tensor, device: str, batch_size: int = 32) -> float:
    """Mean next-token NLL (nats) over every predicted token of `rows` [n, ctx]; the model is left in eval mode."""
    was_training = model.training
    model.to(device).eval()
    total, count = 0.0, 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        total += torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="sum").item()
        count += batch[:, 1:].numel()
    model.train(was_training)
    return total / count


def text_labels(rows: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    """Targets [n, ctx] for `rows` [n, ctx] with only the text tokens in the loss: separators and a document's first
    tokens (core.token_kinds) are -100, which transformers' loss ignores, so the fine-tune learns its domain's text
    rather than where the corpus's short documents end."""
    is_text = token_kinds.token_kinds(rows, special_ids) == token_kinds.TEXT
    labels = rows.clone()
    labels[:, 1:][~is_text] = -100
    labels[:, 0] = -100  # never predicted (transformers shifts the labels); set for clarity
    return labels


@torch.no_grad()
def perplexity_by_kind(model: torch.nn.Module, rows: torch.Tensor, special_ids: Iterable[int], device: str,
                       batch_size: int = 32) -> dict[str, dict[str, float | int | None]]:
    """exp(mean next-token NLL) over the predicted tokens of `rows` [n, ctx], in fp32: over all of them and per kind
    of the predicted token (core.token_kinds: separator, a document's first tokens, text).

    Returns {"perplexity": {kind: value or None when no token is of that kind}, "tokens": {kind: count}}."""
    model.to(device).eval()
    special_ids = tuple(special_ids)
    sums = {kind: 0.0 for kind in KIND_NAMES}
    counts = {kind: 0 for kind in KIND_NAMES}
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none")  # [b, ctx-1]
        for kind, mask in token_kinds.kind_masks(batch, special_ids).items():
            sums[kind] += nll[mask].double().sum().item()
            counts[kind] += int(mask.sum().item())
    return {"perplexity": {kind: math.exp(sums[kind] / counts[kind]) if counts[kind] else None for kind in KIND_NAMES},
            "tokens": counts}
