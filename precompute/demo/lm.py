"""Train and evaluate the demo's GPT-2-architecture language models (transformers `GPT2LMHeadModel`)."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from core.config import DemoRecipe


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
             desc: str) -> list[float]:
    """One epoch over `rows` [n, ctx] in a seeded order; AdamW (0.9, 0.95), wd 0.1, warm-up then cosine.

    Returns the loss of each step (nats per token)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(rows.shape[0], generator=generator)
    n_steps = max(1, rows.shape[0] // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = max(1, n_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / n_steps)))
    model.to(device).train()
    losses: list[float] = []
    bar = tqdm(range(n_steps), desc=desc, unit="step", leave=False)
    for step in bar:
        batch = rows[order[step * batch_size:(step + 1) * batch_size]].to(device)
        loss = model(input_ids=batch, labels=batch).loss  # fp32: bf16 autocast was ~15x slower on this CPU
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def perplexity(model: torch.nn.Module, rows: torch.Tensor, device: str, batch_size: int = 32) -> float:
    """exp(mean next-token NLL) over every predicted position of `rows` [n, ctx], in fp32."""
    model.to(device).eval()
    total_nll, total_tokens = 0.0, 0
    for start in range(0, rows.shape[0], batch_size):
        batch = rows[start:start + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                                reduction="sum")
        total_nll += nll.item()
        total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens)
