"""Exponential moving average of the trainable weights, for sampling.

A plain object, not an ``nn.Module``: DDP broadcasts module buffers every step, and an 860M-parameter copy must
not travel with them. The owner saves :meth:`EMA.state_dict` into the checkpoint and loads it back (exact
resume). The decay warms up as ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as diffusers' ``EMAModel``
without ``use_ema_warmup``), so early averages are not dominated by the random init.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class EMA:
    """Shadow copies of a module's trainable parameters.

    Args:
        module: The module whose ``requires_grad`` parameters are averaged (names are taken from it).
        decay: Maximum decay (e.g. 0.9999).
        warmup: Use the ``(1 + n) / (10 + n)`` warm-up.
    """

    def __init__(self, module: nn.Module, decay: float = 0.9999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            name: p.detach().clone().float() for name, p in module.named_parameters() if p.requires_grad
        }

    def _params(self, module: nn.Module) -> list[torch.Tensor]:
        params = dict(module.named_parameters())
        missing = [n for n in self.shadow if n not in params]
        if missing:
            raise KeyError(f"EMA: the module has no parameters {missing[:3]}... (built from another module?)")
        return [params[n] for n in self.shadow]

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """``shadow <- d * shadow + (1 - d) * param`` for every averaged parameter."""
        d = self.current_decay()
        shadows = list(self.shadow.values())
        params = [p.detach().to(s.dtype) for p, s in zip(self._params(module), shadows, strict=True)]
        torch._foreach_lerp_(shadows, params, 1.0 - d)
        self.num_updates += 1

    def to(self, device: torch.device | str) -> EMA:
        """Moves the shadow weights (in place) and returns ``self``."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Writes the averaged weights into ``module``."""
        for p, s in zip(self._params(module), self.shadow.values(), strict=True):
            p.copy_(s.to(p.dtype))

    @contextmanager
    def swapped(self, module: nn.Module) -> Iterator[nn.Module]:
        """Context manager: ``module`` holds the EMA weights inside, its own weights again after."""
        backup = [p.detach().clone() for p in self._params(module)]
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for p, b in zip(self._params(module), backup, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model's trainable parameters: {sorted(missing)[:5]}")
        device = next(iter(self.shadow.values())).device if self.shadow else "cpu"
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: state["shadow"][k].to(device=device, dtype=torch.float32) for k in self.shadow}
