"""transformers' Auto classes on run directories: after `import textdiff`,

    AutoConfig.from_pretrained(run)      # TextdiffConfig: the run's config.json (recipe, back-end, sizes)
    AutoModel.from_pretrained(run)       # TextdiffModel: the run's denoiser, loaded by textdiff (safetensors only)
    AutoTokenizer.from_pretrained(run)   # the run's tokenizer (tokenizer_config.json names its class)

How, and why this way: a run's config.json carries `"model_type": "textdiff"`, and textdiff registers its classes
for that model type with `AutoConfig.register` / `AutoModel.register`. That works offline and without
`trust_remote_code` (an `auto_map` entry would make transformers import code from the run directory, which this
project never does: loading never runs code from a model folder). `import textdiff` stays light: it imports neither
torch nor transformers, but puts a finder on `sys.meta_path` (`install`) that registers the classes right after
transformers' own auto modules load (or at once, when they already have). The classes themselves live in
textdiff.hf_classes, which imports transformers and torch.
"""

from __future__ import annotations

import importlib.abc
import sys
import warnings

from textdiff.hf_names import MODEL_TYPE, WATCHED  # noqa: F401  (MODEL_TYPE: re-exported for callers)


def register(module_name: str) -> None:
    """After one of WATCHED has loaded: register what can be (textdiff.hf_classes registers itself on import; when
    that import is what loaded the module, the module's own hook has nothing left to do)."""
    loading = sys.modules.get("textdiff.hf_classes")
    if loading is not None and not hasattr(loading, "register_loaded"):
        return  # hf_classes is being imported: its last line registers
    from textdiff import hf_classes

    hf_classes.register_loaded()


def _safe_register(module_name: str) -> None:
    try:
        register(module_name)
    except Exception as e:  # never break the import of transformers itself
        warnings.warn(f"textdiff: could not register its Auto classes with transformers ({type(e).__name__}: {e})")


class _Loader(importlib.abc.Loader):
    """Wraps a watched module's loader: runs the module, then registers."""

    def __init__(self, inner, name: str):
        self.inner, self.name = inner, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        _safe_register(self.name)


class AutoRegistration(importlib.abc.MetaPathFinder):
    """A meta-path finder that only watches transformers' two auto modules (a post-import hook)."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Called by `import textdiff`: register now for auto modules already loaded, later for the others."""
    if any(isinstance(f, AutoRegistration) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, AutoRegistration())
    for name in WATCHED:
        if name in sys.modules:
            _safe_register(name)
