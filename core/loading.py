"""Load an arm of a study: its SAE, then its model the way that SAE was trained, checked against transformers.

Why by hand: `HookedTransformer.from_pretrained` only knows official hub names and asks the hub for their
config, so it cannot load a local folder offline, and TransformerLens's config converter breaks on configs
written by transformers 5 (no `n_ctx`). So the `transformers` model is loaded with `from_pretrained` (hub name,
local folder or GGUF file) and converted by its family's adapter (`core.models`).

Which activations the SAE saw: SAELens trains through `HookedTransformer.from_pretrained_no_processing(
**model_from_pretrained_kwargs)`, so only the processing its metadata names changes a hook's activations. Of
TransformerLens's flags only `center_writing_weights` does that (every residual-stream activation becomes the raw
one minus its mean over `d_model`; gpt2-small-res-jb says `center_writing_weights: true`); most modern SAEs name
none and were trained on raw Hugging Face activations. The other flags (fold_ln, center_unembed,
fold_value_biases) leave every hook the product reads as it was, and stay on as in `from_pretrained`: folded
norms give the projection the unembedding the model really applies, and a faster forward pass.

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
# Re-exported: the demo build, the benchmarks and the tests load models through core.loading.
from core.models import (LOGPROB_TOLERANCE, attention_weights_as_linear_layout, hooked_transformer_from_hf,  # noqa: F401
                         load_hf_model, verify_against_hf)

logger = logging.getLogger(__name__)

# The defaults of HookedTransformer.from_pretrained (gpt2-small-res-jb's model).
DEFAULT_PROCESSING = {
    "fold_ln": True,
    "center_writing_weights": True,
    "center_unembed": True,
    "fold_value_biases": True,
    "refactor_factored_attn_matrices": False,
}
# What an SAE whose metadata names no processing saw (SAELens: from_pretrained_no_processing), with the folds
# that change no hook's activations (module docstring).
NO_CENTRING = {**DEFAULT_PROCESSING, "center_writing_weights": False}
# Hooks whose activations live in the residual stream's basis (what the projection and steering need).
PROJECTABLE_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@dataclass
class LoadedArm:
    """A loaded arm: the model (TransformerLens), its SAE, and the facts read from the SAE's config.

    `hf_model`: the `transformers` model the HookedTransformer was converted from, on the same device, kept for
    generation (steering runs it, `core.steering` says why); None where the arm will not generate. It costs a
    second copy of the weights, since the HookedTransformer's processed weights (folded norms, centred writing
    weights) cannot be shared with it: SmolLM2-135M in fp32 adds ~0.54 GB (134.5M parameters, the tied embedding
    held once) to the HookedTransformer's ~0.65 GB (W_E and W_U apart); gpt2-small adds ~0.5 GB."""

    name: str
    model: Any  # transformer_lens.HookedTransformer
    sae: Any  # sae_lens.SAE
    hook_name: str
    d_sae: int
    device: str
    processing: dict[str, bool]
    hf_model: Any = None  # transformers PreTrainedModel


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
    """Processing that gives the hooks what the SAE saw: writing weights centred only when the kwargs say so
    (SAELens's `from_pretrained_no_processing` semantics), the hook-neutral folds on unless the kwargs say
    otherwise (see the module docstring)."""
    processing = dict(NO_CENTRING)
    for key, value in model_from_pretrained_kwargs.items():
        if key in processing:
            processing[key] = bool(value)
        else:
            logger.info("model_from_pretrained_kwargs.%s=%r does not affect weights; ignored", key, value)
    return processing


def check_projectable_hook(sae: Any, arm_name: str = "") -> str:
    """The SAE reads a d_model-wide activation that is added to (or is) the residual stream, so its decoder rows
    live where W_U reads and can be projected onto the vocabulary and added back when steering; returns the hook.
    Per-head (`attn.hook_z`), pre-activation (`mlp.hook_post`) or per-head-index SAEs are refused."""
    hook_name = sae.cfg.metadata.hook_name
    head_index = getattr(sae.cfg.metadata, "hook_head_index", None)
    parts = hook_name.split(".")
    fits = len(parts) == 3 and parts[0] == "blocks" and parts[1].isdigit() and parts[2] in PROJECTABLE_HOOKS
    if not fits or head_index is not None:
        raise StudyInputError(
            f"arms[{arm_name}]: the SAE reads hook {hook_name!r}{'' if head_index is None else f' (head {head_index})'}, "
            f"which cannot be projected onto the vocabulary; use an SAE at blocks.<layer>.{{{','.join(PROJECTABLE_HOOKS)}}}"
        )
    return hook_name


def check_sae_fits_model(model: Any, sae: Any, arm_name: str = "") -> str:
    """The SAE's hook is one the product projects, exists in the model, and gives activations `d_in` wide;
    returns the hook name."""
    hook_name = check_projectable_hook(sae, arm_name)
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


def load_arm(arm: ArmConfig, device: str = "auto", verify: bool = True, generates: bool = True) -> LoadedArm:
    """SAE first (it says how the model must be processed), then the model, then the checks. `generates`: keep the
    `transformers` model for generation (`LoadedArm.hf_model`); the activation stages pass False, to hold one copy
    of the weights instead of two."""
    device = resolve_device(arm.device or device)
    sae = load_sae(arm, device)
    check_projectable_hook(sae, arm.name)  # before loading a model for nothing
    processing = processing_for(sae)
    hf_model, tokenizer = load_hf_model(arm.model, arm.name)
    try:
        model = hooked_transformer_from_hf(hf_model, tokenizer, processing, device)
    except StudyInputError as err:  # e.g. a rotary scaling its family does not read
        raise StudyInputError(f"arms[{arm.name}].model: {err}") from None
    if verify:
        diff = verify_against_hf(model, hf_model)
        logger.info("arm %s: model matches transformers (max |Δ log-prob| %.2e)", arm.name, diff)
    hook_name = check_sae_fits_model(model, sae, arm.name)
    kept = hf_model.to(device) if generates else None
    if kept is not None:
        share_unchanged_weights(model, kept)
    return LoadedArm(arm.name, model, sae, hook_name, int(sae.cfg.d_sae), device, processing, kept)


def share_unchanged_weights(model: Any, hf_model: Any) -> list[str]:
    """Point the HookedTransformer's W_E and W_U at the `transformers` model's embedding and output head where
    processing left them equal (no centring of writing weights; W_U equal to lm_head.weight.T only when no norm
    was folded into it), so the arm holds one copy of them: on a 256k vocabulary each is d_model × 1 MB in
    fp32. Returns the names shared."""
    shared = []
    pairs = [("W_E", model.embed, hf_model.get_input_embeddings().weight, False),
             ("W_U", model.unembed, getattr(hf_model.get_output_embeddings(), "weight", None), True)]
    for name, module, source, transposed in pairs:
        own = getattr(module, name)
        if source is None:
            continue
        candidate = source.detach().T if transposed else source.detach()
        if candidate.shape == own.shape and candidate.dtype == own.dtype and candidate.device == own.device \
                and torch.equal(candidate, own.detach()):
            setattr(module, name, torch.nn.Parameter(candidate, requires_grad=False))
            shared.append(name)
    return shared


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
