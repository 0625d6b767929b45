"""FrozenEncoder: never trained, never in train mode, never saved; owners load strictly."""

from __future__ import annotations

import torch
from torch import nn

from common.encoders.frozen import FrozenEncoder


class Owner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = FrozenEncoder(nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.BatchNorm1d(8)))
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_optimizer_step_leaves_frozen_weights_bit_identical() -> None:
    owner = Owner()
    before = {k: v.clone() for k, v in owner.encoder.encoder_state_dict().items()}
    head_before = owner.head.weight.clone()
    opt = torch.optim.AdamW(owner.parameters(), lr=0.1)  # even given all parameters
    owner.train()
    for _ in range(3):
        opt.zero_grad()
        owner(torch.randn(6, 4)).pow(2).mean().backward()
        opt.step()
    for k, v in owner.encoder.encoder_state_dict().items():
        assert torch.equal(v, before[k]), k  # BatchNorm running stats included: eval mode
    assert not torch.equal(owner.head.weight, head_before)
    assert all(p.grad is None for p in owner.encoder.parameters())


def test_train_keeps_eval_and_requires_grad_cannot_unfreeze() -> None:
    owner = Owner()
    owner.train()
    assert owner.training and owner.head.training
    assert not owner.encoder.training
    assert not any(m.training for m in owner.encoder.modules())
    owner.encoder.requires_grad_(True)
    assert not any(p.requires_grad for p in owner.encoder.parameters())
    owner.requires_grad_(True)  # flips every flag of the owner's parameters...
    owner(torch.randn(3, 4)).sum().backward()
    assert all(p.grad is None for p in owner.encoder.parameters())  # ...but no gradient gets through
    owner.train()  # ...and the next train() refreezes
    assert not any(p.requires_grad for p in owner.encoder.parameters())
    assert all(p.requires_grad for p in owner.head.parameters())


def test_weights_not_in_state_dict_and_owner_loads_strictly() -> None:
    owner = Owner()
    keys = set(owner.state_dict())
    assert keys == {"head.weight", "head.bias"}
    assert owner.encoder.state_dict() == {}
    fresh = Owner()
    with torch.no_grad():
        fresh.head.weight.zero_()
    result = fresh.load_state_dict(owner.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(fresh.head.weight, owner.head.weight)


def test_frozen_keys_in_an_old_checkpoint_are_ignored() -> None:
    owner = Owner()
    old = dict(owner.state_dict())
    old["encoder.module.0.weight"] = torch.full((8, 4), 7.0)
    before = owner.encoder.module[0].weight.clone()
    owner.load_state_dict(old, strict=True)
    assert torch.equal(owner.encoder.module[0].weight, before)


def test_forward_has_no_grad_and_works_in_inference_mode() -> None:
    owner = Owner()
    x = torch.randn(2, 4, requires_grad=True)
    assert not owner.encoder(x).requires_grad
    with torch.inference_mode():
        assert owner(torch.randn(2, 4)).shape == (2, 1)


def test_lightning_eval_mode_warning_is_silenced_for_frozen_modules_only(tmp_path) -> None:
    """Lightning warns at fit start about modules in eval mode: by design for the frozen ones (silenced), a real
    problem for any other (still warned about, since the count then differs)."""
    import warnings

    import lightning as L

    from common.encoders.frozen import expect_frozen_eval_modules, frozen_module_count

    class Module(L.LightningModule):
        def __init__(self, stray_eval: bool) -> None:
            super().__init__()
            self.owner = Owner()
            self.stray_eval = stray_eval
            self.train()

        def on_fit_start(self) -> None:
            expect_frozen_eval_modules(self)

        def training_step(self, batch, batch_idx):
            return self.owner(batch[0]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.owner.head.parameters(), lr=0.1)

        def train(self, mode: bool = True):
            super().train(mode)
            if self.stray_eval:
                self.owner.head.eval()  # a trainable layer left in eval mode by mistake
            return self

    assert frozen_module_count(Owner()) == 5  # the wrapper, Sequential, Linear, Dropout, BatchNorm1d
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 4)), batch_size=4)
    for stray, expected in ((False, 0), (True, 1)):
        trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(Module(stray), data)
        assert sum("in eval mode at the start of training" in str(w.message) for w in caught) == expected
