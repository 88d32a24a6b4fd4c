"""SLERP merges of two fine-tunes of one base (Horn & Elliott, seed 004, §3.3), through mergekit.

mergekit (PyPI `mergekit`, requirements-models.txt) is what researchers who merge models use, so the merge is
its own `slerp` method, driven by the YAML config it reads: that file is written beside the merged model
(`mergekit_config.yml`) and `mergekit-yaml mergekit_config.yml OUT` reproduces the merge by hand.

Semantics (mergekit 0.1.5, `merge_methods/slerp.py`): each tensor, flattened to one vector, moves along its
own great circle, `(sin((1-t)θ) a + sin(tθ) b) / sin θ` with `cos θ` the cosine of the two flattened tensors
(the unnormalised tensors are interpolated, so norms interpolate too); a tensor whose |cos θ| exceeds 0.9995
(colinear or antipodal) falls back to `(1-t) a + t b`. t = 0 gives model A and t = 1 model B, exactly. The checks
here run before mergekit sees anything: a merge of models of different architectures or tensor shapes, or a t
outside [0, 1], is one line and writes nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from core.errors import StudyInputError

logger = logging.getLogger(__name__)

MERGEKIT_CONFIG = "mergekit_config.yml"
INSTALL_HINT = "pip install -r requirements-models.txt (it pins mergekit)"
# safetensors header dtypes -> the names mergekit's `dtype:` takes.
_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "F64": "float64"}


def check_t(t: float) -> float:
    """t is the fraction of the way from model A to model B: 0 is A, 1 is B."""
    if not 0.0 <= float(t) <= 1.0:
        raise StudyInputError(f"SLERP t = {t} is outside [0, 1]: 0 gives model A, 1 model B; pick a t in between")
    return float(t)


def _architecture(folder: Path) -> str:
    config = folder / "config.json"
    if not config.is_file():
        raise StudyInputError(f"{folder} has no config.json: a merge needs two transformers model folders "
                              "(save_pretrained)")
    architectures = json.loads(config.read_text()).get("architectures") or ["?"]
    return str(architectures[0])


def tensor_shapes(folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor's (shape, dtype) read from the safetensors headers; no weight is loaded."""
    from safetensors import safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise StudyInputError(f"{folder} has no *.safetensors: save the model with save_pretrained "
                              "(safe_serialization) before merging it")
    shapes = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                piece = handle.get_slice(name)
                shapes[name] = (tuple(piece.get_shape()), piece.get_dtype())
    return shapes


def check_mergeable(model_a: Path, model_b: Path) -> str:
    """One line unless both folders hold the same architecture with every tensor of the same shape.

    Returns the dtype mergekit should write (the parents'; float32 when they differ)."""
    arch_a, arch_b = _architecture(model_a), _architecture(model_b)
    if arch_a != arch_b:
        raise StudyInputError(f"cannot merge {model_a} ({arch_a}) with {model_b} ({arch_b}): SLERP needs two "
                              "fine-tunes of one base model, the same architecture")
    shapes_a, shapes_b = tensor_shapes(model_a), tensor_shapes(model_b)
    only = sorted(set(shapes_a) ^ set(shapes_b))
    if only:
        raise StudyInputError(f"cannot merge {model_a} with {model_b}: {len(only)} tensors are in one only "
                              f"(e.g. {only[0]}); SLERP needs two fine-tunes of one base model")
    for name in sorted(shapes_a):
        if shapes_a[name][0] != shapes_b[name][0]:
            raise StudyInputError(f"cannot merge {model_a} with {model_b}: {name} is {list(shapes_a[name][0])} "
                                  f"against {list(shapes_b[name][0])}; SLERP needs the same shapes")
    dtypes = {dtype for _, dtype in shapes_a.values()} | {dtype for _, dtype in shapes_b.values()}
    return _DTYPES.get(dtypes.pop(), "float32") if len(dtypes) == 1 else "float32"


def slerp_config_yaml(model_a: Path, model_b: Path, t: float, dtype: str = "float32") -> str:
    """The mergekit YAML of a SLERP from A (t = 0) to B (t = 1): A is mergekit's base_model."""
    return (f"# SLERP merge (core/merge.py); rerun by hand: mergekit-yaml {MERGEKIT_CONFIG} OUT_FOLDER\n"
            "merge_method: slerp\n"
            f"base_model: {json.dumps(str(model_a))}\n"
            "models:\n"
            f"  - model: {json.dumps(str(model_a))}\n"
            f"  - model: {json.dumps(str(model_b))}\n"
            "parameters:\n"
            f"  t: {float(t)!r}\n"
            f"dtype: {dtype}\n")


def slerp_merge(model_a: Path, model_b: Path, t: float, out: Path) -> Path:
    """Merge two transformers folders by mergekit's SLERP at t into `out` (a transformers folder with A's
    tokenizer and `mergekit_config.yml`). Built beside `out` and renamed into place: a failed merge leaves
    whatever was at `out` untouched."""
    model_a, model_b, out = Path(model_a).resolve(), Path(model_b).resolve(), Path(out)
    t = check_t(t)
    dtype = check_mergeable(model_a, model_b)
    try:
        from mergekit.config import MergeConfiguration
        from mergekit.io.tasks import LoaderCache
        from mergekit.merge import MergeOptions, run_merge
    except ImportError as err:
        raise StudyInputError(f"SLERP merges need mergekit ({err}): {INSTALL_HINT}") from err
    import yaml

    text = slerp_config_yaml(model_a, model_b, t, dtype)
    building = out.with_name(out.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        config = MergeConfiguration.model_validate(yaml.safe_load(text))
        run_merge(config, str(building), MergeOptions(copy_tokenizer=True, quiet=True, lazy_unpickle=False),
                  config_source=text)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    finally:
        LoaderCache().loaders.clear()  # a per-thread cache keyed by path: a rebuilt parent must be re-read
    _replace(building, out)
    logger.info("merged %s and %s by SLERP at t=%.4f into %s", model_a, model_b, t, out)
    return out


def _replace(building: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    building.rename(out)
    shutil.rmtree(old, ignore_errors=True)
