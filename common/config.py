"""The one way to read our YAML configs outside ``lightning fit``: stacked files merged as ``--config a --config
b`` merges them, and parts built from their ``class_path`` / ``init_args`` with jsonargparse, the parser
LightningCLI itself uses (so a part is built exactly as the CLI would build it, with the same type checks).

Tools that need only some parts of a training config (the frozen encoders for a latent precompute, the module of
a checkpoint written outside the CLI) use this instead of instantiating the whole experiment.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml


def merge_configs(base: Any, over: Any) -> Any:
    """Deep merge of YAML dicts (``over`` wins); a new ``class_path`` replaces the whole sub-config."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    if "class_path" in over and over.get("class_path") != base.get("class_path"):
        return over
    out = dict(base)
    for k, v in over.items():
        out[k] = merge_configs(base.get(k), v) if k in base else v
    return out


def load_config(paths: str | Path | Sequence[str | Path]) -> dict[str, Any]:
    """Merges stacked YAML configs (later ones win), as ``--config a --config b`` does."""
    cfg: dict[str, Any] = {}
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        cfg = merge_configs(cfg, yaml.safe_load(Path(p).read_text()) or {})
    return cfg


def instantiate(spec: dict[str, Any] | None, base: type) -> Any:
    """Builds one part of a config with jsonargparse.

    Args:
        spec: ``{"class_path": ..., "init_args": {...}}`` (``base`` or a subclass of it), or the plain init
            arguments of ``base`` itself; ``None`` gives ``None``.
        base: The class the part must be (a subclass of).
    """
    if spec is None:
        return None
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    if isinstance(spec, dict) and "class_path" in spec:
        parser.add_subclass_arguments(base, "obj", fail_untyped=False)
    else:
        parser.add_class_arguments(base, "obj", fail_untyped=False)
    cfg = parser.parse_object({"obj": spec})
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes  # renamed in jsonargparse 4.49
    return build(cfg).obj
