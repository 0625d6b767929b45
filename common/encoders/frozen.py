"""The one frozen-encoder wrapper: eval mode forever, no gradients, no weights in checkpoints.

Every pretrained encoder that is not trained (open_clip towers, MiniLM, EfficientNet-Lite0 as an image
encoder, the diffusion U-Net used as a feature extractor) lives inside a :class:`FrozenEncoder`, as ODISE's
``FeatureExtractor`` does:

* ``requires_grad_(False)`` at construction and again at every ``train()``/``eval()`` call (an owner's
  ``requires_grad_(True)`` flips the flags, but the next ``train()``, which Lightning calls at the start of
  fitting, resets them; and no gradient can reach the weights anyway, see ``forward``);
* ``train(mode)`` keeps it in eval mode (dropout off, BatchNorm statistics fixed);
* its weights are left out of ``state_dict()``: an owner's (LightningModule's) checkpoint holds only the
  trainable part and loads back with ``strict=True``; frozen keys found in an older checkpoint are ignored
  (the encoder's weights always come from its own source);
* ``forward`` runs under ``torch.no_grad()`` (safe inside ``torch.inference_mode()`` too).

The parameters stay registered (``named_parameters()`` lists them with ``requires_grad=False``), so
``.to(device)``, ``.half()``, model summaries and DDP behave as usual; optimizers should be built from
``p for p in module.parameters() if p.requires_grad``.

Lightning warns at the start of every fit that the modules inside (hundreds) are in eval mode. That is the
design, so an owner calls :func:`expect_frozen_eval_modules` in ``on_fit_start``: it silences that one warning
for exactly the number of frozen modules, so any *other* module left in eval mode still gets warned about.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from typing import Any

import torch
from lightning.fabric.utilities.warnings import PossibleUserWarning
from torch import nn

_INNER = "module."


def _drop_frozen_missing_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """Load-state-dict post hook: the frozen weights are never expected in a state dict."""
    prefix = getattr(module, "_load_prefix", "") + _INNER
    incompatible_keys.missing_keys[:] = [
        k for k in incompatible_keys.missing_keys if not k.startswith(prefix)
    ]


class FrozenEncoder(nn.Module):
    """Wraps a pretrained module so that it is never trained, never saved and never in train mode.

    Args:
        module: The pretrained module (any ``nn.Module``). Available as ``.module``.

    Example:
        >>> enc = FrozenEncoder(nn.Linear(4, 2))
        >>> enc.state_dict()
        OrderedDict()
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        module.requires_grad_(False)
        self.train(False)
        self._load_prefix = ""
        self.register_load_state_dict_post_hook(_drop_frozen_missing_keys)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Calls the wrapped module under ``torch.no_grad()``."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Ignores ``mode``: the wrapped module always stays in eval mode (and frozen)."""
        self.module.requires_grad_(False)
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> FrozenEncoder:
        """Ignores ``requires_grad``: the wrapped parameters never require gradients."""
        return super().requires_grad_(False)

    def state_dict(
        self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False
    ) -> Any:
        """Returns ``destination`` unchanged (an empty dict when ``None``): frozen weights are not saved.

        Use :meth:`encoder_state_dict` to get the wrapped module's own weights.
        """
        if destination is None:
            destination = OrderedDict()
            destination._metadata = OrderedDict()  # type: ignore[attr-defined]
        return destination

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The wrapped module's weights (which :meth:`state_dict` leaves out)."""
        return self.module.state_dict()

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # ``state_dict`` here is the loader's private copy: drop any frozen weights found in it (so that the
        # wrapped module keeps its own) and remember the prefix for the post hook that forgives their absence.
        for key in [k for k in state_dict if k.startswith(prefix + _INNER)]:
            del state_dict[key]
        self._load_prefix = prefix
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"frozen, {n:,} parameters"


def frozen_module_count(module: nn.Module) -> int:
    """Number of modules of ``module`` inside a :class:`FrozenEncoder` (the wrappers included)."""
    inside: set[int] = set()
    for m in module.modules():
        if isinstance(m, FrozenEncoder):
            inside.update(id(x) for x in m.modules())
    return len(inside)


def expect_frozen_eval_modules(module: nn.Module) -> None:
    """Silences Lightning's "Found N module(s) in eval mode at the start of training" warning when N is exactly
    the number of frozen modules of ``module`` (they are in eval mode by design). Call it in ``on_fit_start``;
    with any other module in eval mode N differs and the warning is still shown."""
    n = frozen_module_count(module)
    if n:
        warnings.filterwarnings(
            "ignore", message=re.escape(f"Found {n} module(s) in eval mode at the start of training."),
            category=PossibleUserWarning,
        )
