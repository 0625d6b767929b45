"""Saving a LightningModule's constructor arguments so that ``load_from_checkpoint`` can rebuild it, without
Lightning's private hooks.

Under LightningCLI a module's parts (networks, losses, optimizer factories) arrive as their *config*
(``class_path`` dicts, small, and what rebuilds them); LightningCLI marks the hyperparameters it hands over with
the ``_instantiator`` key it later uses in ``load_from_checkpoint``. Built in Python, the parts are objects:
saving them would deep-copy (and pickle) whole networks, so they are left out and must be passed to
``load_from_checkpoint`` again.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from lightning import LightningModule


def save_config_hyperparameters(module: LightningModule, objects: Sequence[str] = (), ignore: Sequence[str] = ()
                                ) -> None:
    """``module.save_hyperparameters`` for a module whose parts are objects built in Python or configs given by
    LightningCLI (module docstring). Call it from the module's ``__init__``.

    Args:
        module: The module being constructed.
        objects: Arguments that are parts (saved only as LightningCLI's config).
        ignore: Arguments never saved (e.g. evaluation switches the command line must win over).
    """
    frame = inspect.currentframe()
    caller = frame.f_back if frame is not None else None
    module.save_hyperparameters(ignore=[*objects, *ignore], frame=caller)
    if "_instantiator" in module.hparams:  # given by LightningCLI: the parts are configs, keep them
        module.save_hyperparameters(ignore=list(ignore), frame=caller)
