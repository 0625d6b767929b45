"""``null`` on the command line means ``None`` at every nesting depth.

jsonargparse (4.x) passes a command-line value set inside a nested ``class_path`` (e.g.
``--data.init_args.reader.init_args.mask_dir null``) down to the inner parser by formatting it back into an
argument, ``f"--{key}={value}"``. The value has already been read as YAML at that point, so ``null`` became
``None`` and comes back as the text ``"None"``: YAML reads that as the string ``"None"``, so a ``str | None``
argument got ``"None"`` (and a ``Reader | None`` one failed). :func:`patch_nested_null` formats ``None`` as
``null`` again. It wraps the one jsonargparse function that does this, and does nothing when jsonargparse lacks
it, so an upgrade that changes it loses the fix but nothing else (``tests/test_cli_null.py`` then fails).
"""

from __future__ import annotations

import functools
from typing import Any


def patch_nested_null() -> bool:
    """Installs the fix (idempotent). Returns whether jsonargparse has the function it wraps."""
    try:
        from jsonargparse import _typehints
        from jsonargparse._util import NestedArg
    except ImportError:  # pragma: no cover - another jsonargparse layout
        return False
    original = getattr(_typehints, "adapt_class_type", None)
    spec = getattr(_typehints, "subclass_spec_as_namespace", None)
    if original is None or spec is None:  # pragma: no cover
        return False
    if getattr(original, "_defectfm_null", False):
        return True

    @functools.wraps(original)
    def adapt_class_type(value: Any, *args: Any, **kwargs: Any) -> Any:
        value = spec(value)  # what the original does first (idempotent)
        init_args = value.get("init_args") if value is not None else None
        if isinstance(init_args, NestedArg) and init_args.val is None:
            value["init_args"] = NestedArg(key=init_args.key, val="null")
        return original(value, *args, **kwargs)

    adapt_class_type._defectfm_null = True  # type: ignore[attr-defined]
    _typehints.adapt_class_type = adapt_class_type
    return True
