"""Load an arm of a study: its SAE, then its model the way that SAE was trained, checked against transformers.

Why by hand: `HookedTransformer.from_pretrained` only knows official hub names and asks the hub for their
config, so it cannot load a local folder offline, and TransformerLens's config converter breaks on configs
written by transformers 5 (no `n_ctx`). So the `transformers` model is loaded with `from_pretrained` (hub name
or local folder), converted with TransformerLens's own GPT-2 weight converter, and processed with exactly the
flags `HookedTransformer.from_pretrained` would use, overridden by the SAE's
`metadata.model_from_pretrained_kwargs`. For gpt2 + `gpt2-small-res-jb` that is fold_ln, center_writing_weights,
center_unembed and fold_value_biases: centring the writing weights makes every residual-stream activation the
raw one minus its mean over `d_model`, which is what that SAE was trained on.

Loading is checked, not hoped: `verify_against_hf` compares log-probabilities with the `transformers` model
(processing moves raw logits by a per-position constant only), so a half-loaded model (the study authors'
`strict=False` bug) fails loudly.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.config import ArmConfig
from core.errors import StudyInputError

logger = logging.getLogger(__name__)

# The defaults of HookedTransformer.from_pretrained: what an SAE trained through SAELens saw unless its
# metadata says otherwise.
DEFAULT_PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}
SUPPORTED_ARCHITECTURES = ("GPT2LMHeadModel",)
LOGPROB_TOLERANCE = 1e-3


@dataclass
class LoadedArm:
    """A loaded arm: the model (TransformerLens), its SAE, and the facts read from the SAE's config."""

    name: str
    model: Any  # transformer_lens.HookedTransformer
    sae: Any  # sae_lens.SAE
    hook_name: str
    d_sae: int
    device: str
    processing: dict[str, bool]


def resolve_device(requested: str) -> str:
    """"auto" → "cuda" when torch sees a GPU, else "cpu"; "cuda" without a GPU is a user error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise StudyInputError("device = \"cuda\" but torch sees no GPU; use device = \"auto\" or \"cpu\"")
    return requested


def load_sae(arm: ArmConfig, device: str) -> Any:
    """The arm's SAELens SAE, from a local folder or a pretrained release."""
    from sae_lens import SAE

    if arm.sae_path is not None:
        folder = Path(arm.sae_path)
        if not (folder / "cfg.json").is_file():
            raise StudyInputError(
                f"arms[{arm.name}].sae_path: {folder} is not an SAE folder (no cfg.json); "
                "build the demo with `python -m precompute build-demo` or save yours with sae.save_model(folder)"
            )
        with _quiet_processing_advice():
            return SAE.load_from_disk(str(folder), device=device)
    try:
        with _quiet_processing_advice():
            return SAE.from_pretrained(arm.sae_release, arm.sae_id, device=device)
    except (ValueError, KeyError, OSError) as err:
        raise StudyInputError(
            f"arms[{arm.name}]: could not load SAE {arm.sae_release}/{arm.sae_id} ({str(err).splitlines()[0]}); "
            "check the release and id in SAELens's pretrained_saes.yaml, and that the hub is reachable"
        ) from err


@contextmanager
def _quiet_processing_advice() -> Iterator[None]:
    # SAELens advises HookedSAETransformer.from_pretrained_no_processing(...); we apply that processing
    # ourselves (processing_for) and check it, so the advice is noise to the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"(?s).*non-empty model_from_pretrained_kwargs")
        yield


def processing_for(sae: Any) -> dict[str, bool]:
    """HookedTransformer processing flags for the model this SAE was trained on."""
    return processing_from_kwargs(getattr(sae.cfg.metadata, "model_from_pretrained_kwargs", None) or {})


def processing_from_kwargs(model_from_pretrained_kwargs: dict[str, Any]) -> dict[str, bool]:
    """`HookedTransformer.from_pretrained` defaults, overridden by the weight-processing keys of the kwargs."""
    processing = dict(DEFAULT_PROCESSING)
    for key, value in model_from_pretrained_kwargs.items():
        if key in processing:
            processing[key] = bool(value)
        else:
            logger.info("model_from_pretrained_kwargs.%s=%r does not affect weights; ignored", key, value)
    return processing


def load_hf_model(model_ref: str, arm_name: str = "") -> tuple[Any, Any]:
    """`transformers` causal LM and tokenizer from a hub name or a local folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    looks_local = model_ref.startswith((".", "/")) or Path(model_ref).exists() or model_ref.count("/") > 1
    if looks_local and not (Path(model_ref) / "config.json").is_file():
        raise StudyInputError(
            f"arms[{arm_name}].model: {model_ref} is not a model folder (no config.json); "
            "build the demo with `python -m precompute build-demo` or save yours with save_pretrained(folder)"
        )
    try:
        with _no_weight_loading_bar():
            hf_model = AutoModelForCausalLM.from_pretrained(model_ref, dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_ref)
    except OSError as err:
        raise StudyInputError(
            f"arms[{arm_name}].model: could not load {model_ref!r} ({str(err).splitlines()[0]}); "
            "give a local folder or a hub name reachable from here"
        ) from err
    return hf_model, tokenizer


@contextmanager
def _no_weight_loading_bar() -> Iterator[None]:
    # transformers draws a bar per load; loading takes a second and the precompute has its own progress.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def hooked_transformer_from_hf(hf_model: Any, tokenizer: Any, processing: dict[str, bool], device: str) -> Any:
    """Convert a `transformers` GPT-2-family model into a processed HookedTransformer on `device`."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights

    hf_cfg = hf_model.config
    architecture = (hf_cfg.architectures or ["?"])[0]
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise StudyInputError(
            f"model architecture {architecture} is not supported yet (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    cfg = HookedTransformerConfig(
        d_model=hf_cfg.n_embd,
        d_head=hf_cfg.n_embd // hf_cfg.n_head,
        n_heads=hf_cfg.n_head,
        d_mlp=hf_cfg.n_inner or 4 * hf_cfg.n_embd,
        n_layers=hf_cfg.n_layer,
        n_ctx=hf_cfg.n_positions,
        eps=hf_cfg.layer_norm_epsilon,
        d_vocab=hf_cfg.vocab_size,
        act_fn=hf_cfg.activation_function,
        normalization_type="LN",
        original_architecture=architecture,
        scale_attn_by_inverse_layer_idx=hf_cfg.scale_attn_by_inverse_layer_idx,
        default_prepend_bos=True,
        device=device,
        dtype=torch.float32,
    )
    state_dict = convert_gpt2_weights(hf_model, cfg)
    state_dict.setdefault("unembed.b_U", torch.zeros(cfg.d_vocab))  # GPT-2 has no unembedding bias
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    missing = set(model.state_dict()) - set(state_dict) - _buffers(model)
    if missing:
        raise RuntimeError(f"weight conversion left parameters unset: {sorted(missing)[:5]}")
    model.load_and_process_state_dict(state_dict, **processing)
    model = model.to(device, print_details=False).eval()
    attention_weights_as_linear_layout(model)
    return model


def attention_weights_as_linear_layout(model: Any) -> None:
    """Lay out each block's W_Q/W_K/W_V [head_index, d_model, d_head] and W_O [head_index, d_head, d_model] in
    memory the way TransformerLens's attention reshapes them for `F.linear` ((head_index d_head) × d_model, and
    d_model × (head_index d_head)), keeping their shapes and values. Its `einops.rearrange` then returns a view
    instead of copying all four matrices on every forward pass: at gpt2-small that copy was a third of the time
    of a one-token generation step on the CPU (2.1 s of 6.5 s for 50 tokens)."""
    for block in model.blocks:
        attn = block.attn
        for name in ("W_Q", "W_K", "W_V"):
            weight = getattr(attn, name, None)
            if isinstance(weight, torch.nn.Parameter) and weight.dim() == 3:
                weight.data = weight.data.permute(0, 2, 1).contiguous().permute(0, 2, 1)
        weight = getattr(attn, "W_O", None)
        if isinstance(weight, torch.nn.Parameter) and weight.dim() == 3:
            weight.data = weight.data.permute(2, 0, 1).contiguous().permute(1, 2, 0)


def _buffers(model: Any) -> set[str]:
    return {name for name, _ in model.named_buffers()}


@torch.no_grad()
def verify_against_hf(model: Any, hf_model: Any, n_tokens: int = 16) -> float:
    """Max |Δ log-prob| between the HookedTransformer and `transformers` on a fixed probe; raises if too large."""
    d_vocab = hf_model.config.vocab_size
    probe = (torch.arange(n_tokens) * 7919 % d_vocab).unsqueeze(0)  # [1, n] deterministic, spread over the vocab
    reference = hf_model(probe).logits.float().log_softmax(-1)
    ours = model(probe.to(model.cfg.device)).float().log_softmax(-1).cpu()
    diff = (reference - ours).abs().max().item()
    if diff > LOGPROB_TOLERANCE:
        raise RuntimeError(f"loaded model disagrees with transformers: max |Δ log-prob| {diff:.3g} > {LOGPROB_TOLERANCE}")
    return diff


def check_sae_fits_model(model: Any, sae: Any, arm_name: str = "") -> str:
    """The SAE's hook exists in the model and its activations are `d_in` wide; returns the hook name."""
    hook_name = sae.cfg.metadata.hook_name
    if hook_name not in model.hook_dict:
        resid = [name for name in model.hook_dict if name.endswith(("hook_resid_pre", "hook_mlp_out"))][:4]
        raise StudyInputError(
            f"arms[{arm_name}]: the SAE reads hook {hook_name!r}, which this model does not have "
            f"(it has e.g. {', '.join(resid)}); the SAE was trained on another model"
        )
    captured: list[torch.Size] = []
    probe = torch.zeros(1, 2, dtype=torch.long, device=model.cfg.device)
    with torch.no_grad():
        model.run_with_hooks(probe, fwd_hooks=[(hook_name, lambda act, hook: captured.append(act.shape))],
                             stop_at_layer=stop_layer_for(hook_name))
    width = captured[0][-1]
    if width != sae.cfg.d_in:
        raise StudyInputError(
            f"arms[{arm_name}]: the SAE expects d_in={sae.cfg.d_in} at {hook_name} but the model gives {width}; "
            "pair each model with an SAE trained on it"
        )
    return hook_name


def stop_layer_for(hook_name: str) -> int | None:
    """Run only up to the hook's block: `blocks.L.*` needs blocks 0..L."""
    parts = hook_name.split(".")
    return int(parts[1]) + 1 if parts[0] == "blocks" and parts[1].isdigit() else None


def load_arm(arm: ArmConfig, device: str = "auto", verify: bool = True) -> LoadedArm:
    """SAE first (it says how the model must be processed), then the model, then the checks."""
    device = resolve_device(arm.device or device)
    sae = load_sae(arm, device)
    processing = processing_for(sae)
    hf_model, tokenizer = load_hf_model(arm.model, arm.name)
    model = hooked_transformer_from_hf(hf_model, tokenizer, processing, device)
    if verify:
        diff = verify_against_hf(model, hf_model)
        logger.info("arm %s: model matches transformers (max |Δ log-prob| %.2e)", arm.name, diff)
    del hf_model
    hook_name = check_sae_fits_model(model, sae, arm.name)
    return LoadedArm(arm.name, model, sae, hook_name, int(sae.cfg.d_sae), device, processing)


def weights_fingerprint(model: Any) -> str:
    """sha256 over every parameter: two arms with the same fingerprint are the same model (a loading bug)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def decoder_fingerprint(sae: Any) -> str:
    """sha256 of W_dec: identifies the features an arm's labels refer to (a retrained SAE gets a new one)."""
    return hashlib.sha256(sae.W_dec.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
