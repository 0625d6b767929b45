"""Presets: built from YAML-style configs (jsonargparse), offline_real with real weights."""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from clipmdc.model import CLIPMDC
from clipmdc.module import CLIPMDCModule
from clipmdc.presets import PRESETS, offline_real, tiny, vit_b16


def _instantiate(parser: ArgumentParser, cfg):
    """``instantiate`` (jsonargparse >= 4.49) or ``instantiate_classes`` (older)."""
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(cfg)


def test_preset_function_as_class_path_with_overrides() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(CLIPMDCModule, "model")
    cfg = parser.parse_object(
        {
            "model": {
                "model": {"class_path": "clipmdc.presets.tiny", "init_args": {"decoder_width": 8}},
                "regime": "weakly_supervised",
                "defect_types": ["good", "scratch", "dent"],
                "loss": {"class_path": "clipmdc.loss.CLIPMDCLoss", "init_args": {"weights": {"dice": 2.0}}},
            }
        }
    )
    module = _instantiate(parser, cfg).model
    assert isinstance(module, CLIPMDCModule) and isinstance(module.model, CLIPMDC)
    assert module.model.decoder.fuse[0][0].out_channels == 8
    assert module.regime == "weakly_supervised" and module.loss.weights["dice"] == 2.0
    assert module.model.defect_types == ["good", "scratch", "dent"]


def test_spelled_out_network_config() -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--net", type=CLIPMDC)
    cfg = parser.parse_object(
        {
            "net": {
                "class_path": "clipmdc.model.CLIPMDC",
                "init_args": {
                    "image_encoder": {
                        "class_path": "common.encoders.image.TimmImage",
                        "init_args": {
                            "model_name": "test_vit",
                            "layers": [1, 3],
                            "model_kwargs": {"dynamic_img_size": True},
                        },
                    },
                    "text_encoder": {"class_path": "common.encoders.text.TinyText", "init_args": {"dim": 16}},
                    "backbone": {
                        "class_path": "common.encoders.backbone.TimmBackbone",
                        "init_args": {"model_name": "test_efficientnet", "out_indices": [1]},
                    },
                    "decoder_width": 8,
                },
            }
        }
    )
    net = _instantiate(parser, cfg).net
    assert net(torch.rand(1, 3, 32, 32)).type_map.shape == (1, 2, 32, 32)


def test_offline_real_loads_real_weights_and_runs() -> None:
    model = offline_real(defect_types=["good", "scratch"])
    counts = model.parameter_counts()
    assert counts["frozen"] > 20_000_000 and counts["trainable"] < counts["frozen"]
    assert model.text_encoder.dim == 384 and model.image_encoder.embed_dim == 1280
    out = model(torch.rand(1, 3, 64, 64))
    assert out.anomaly_map.shape == (1, 1, 64, 64) and out.type_map.shape == (1, 2, 64, 64)
    assert torch.isfinite(out.type_map).all()


def test_presets_registry() -> None:
    assert set(PRESETS) == {"tiny", "vit_b16", "offline_real"}
    assert isinstance(tiny(), CLIPMDC) and isinstance(tiny(backbone=False), CLIPMDC)
    assert not hasattr(CLIPMDC, "tiny")  # no preset classmethods: clipmdc.model does not import the presets


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_print_config_lists_forwarded_arguments(name: str, capsys) -> None:
    """Presets forward ``**kwargs`` to ``CLIPMDC``; jsonargparse still lists every argument (and its default)."""
    from common.cli import DefectCLI
    from tests.conftest import REPO

    args = ["fit", "--config", str(REPO / "configs" / "clipmdc" / "demo.yaml"),
            "--model.model", f"clipmdc.presets.{name}", "--model.model.init_args.memory_weight", "3.5",
            "--print_config"]
    with pytest.raises(SystemExit) as e:
        DefectCLI(args=args)
    assert e.value.code == 0
    listed = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]["model"]["init_args"]
    own = [p for p, v in inspect.signature(PRESETS[name]).parameters.items() if v.kind is v.POSITIONAL_OR_KEYWORD]
    forwarded = [p for p in inspect.signature(CLIPMDC).parameters
                 if p not in ("image_encoder", "text_encoder", "backbone")]
    assert set(own) | set(forwarded) == set(listed), name
    assert listed["memory_weight"] == 3.5 and listed["defect_types"] == ["good", "defect"]


@pytest.mark.slow
def test_vit_b16_random_init_runs() -> None:
    """The paper-like architecture (random weights: no download); tens of seconds on CPU."""
    model = vit_b16(pretrained=None, backbone_weights=None, defect_types=["good", "scratch", "dent"])
    assert model.parameter_counts()["frozen"] > 149_000_000
    out = model(torch.rand(1, 3, 224, 224))
    assert out.anomaly_map.shape == (1, 1, 224, 224) and out.type_logits.shape == (1, 3)
