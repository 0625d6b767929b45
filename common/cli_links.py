"""Linked arguments next to ``class_path`` functions (presets).

:class:`common.cli.DefectCLI` links the DataModule's class names to ``model.init_args.data_vocabulary``;
jsonargparse (4.x) records such a target as ``linked_targets`` in the model argument's parser settings. When a
config value of the model is replaced (e.g. ``--model.init_args.image_threshold 0.0`` after ``--config`` files, or
over a checkpoint's model config), jsonargparse compares the old and the new value key by key and builds a parser
for each nested ``class_path`` with the *model's* settings; for a nested ``class_path`` that is a function (a
preset such as ``clipmdc.presets.tiny``) it passes ``linked_targets`` on to ``add_function_arguments``, which does
not take it: ``TypeError: ... unexpected keyword argument 'linked_targets'``. :func:`patch_function_links` leaves
``linked_targets`` out for functions (a function's parameters are never link targets there: jsonargparse has no
way to mark them). It wraps the one jsonargparse function, and does nothing when jsonargparse lacks it, so an
upgrade that changes it loses the fix but nothing else (``tests/test_cli_links.py`` then fails).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any


def patch_function_links() -> bool:
    """Installs the fix (idempotent). Returns whether jsonargparse has the function it wraps."""
    try:
        from jsonargparse import _typehints
    except ImportError:  # pragma: no cover - another jsonargparse layout
        return False
    action = getattr(_typehints, "ActionTypeHint", None)
    original = getattr(action, "get_class_parser", None)
    import_object, origin = getattr(_typehints, "import_object", None), getattr(_typehints, "get_typehint_origin", None)
    if original is None or import_object is None or origin is None:  # pragma: no cover
        return False
    if getattr(original, "_defectfm_links", False):
        return True

    @functools.wraps(original)
    def get_class_parser(val_class: Any, sub_add_kwargs: dict | None = None, skip_args: Any = None) -> Any:
        if sub_add_kwargs and "linked_targets" in sub_add_kwargs:
            target = import_object(val_class) if isinstance(val_class, str) else val_class
            if not (inspect.isclass(target) or inspect.isclass(origin(target))):
                sub_add_kwargs = {k: v for k, v in sub_add_kwargs.items() if k != "linked_targets"}
        return original(val_class, sub_add_kwargs, skip_args)

    get_class_parser._defectfm_links = True  # type: ignore[attr-defined]
    action.get_class_parser = staticmethod(get_class_parser)
    return True
