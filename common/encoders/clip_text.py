"""transformers' ``CLIPTextModel`` (Stable Diffusion's text encoder: CLIP ViT-L/14, 768-d) behind the
:class:`~common.encoders.text.TextEncoder` interface, with the token sequence as well.

* :meth:`CLIPTextEncoder.encode` (the common interface): ``(N, D)`` L2-normalised pooled embeddings (the final
  layer-normed hidden state of the end-of-text token, ``pooler_output``, in the same space as the tokens);
* :meth:`CLIPTextEncoder.encode_text`: pooled embeddings and the full ``(N, L, D)`` hidden-state sequence with
  its attention mask (what SD feeds to cross-attention).

Weights load with ``from_pretrained`` from a local folder or a hub id (``subfolder="text_encoder"`` for an SD
pipeline repo). A folder without tokenizer files can still be used: :func:`write_clip_tokenizer` writes CLIP's
BPE tokenizer (``vocab.json`` + ``merges.txt``) from the copy that ships inside open_clip, offline.

Why in ``common/encoders``: stage 1 is its main user, but it implements the common text-encoder interface, so
CLIP-MDC's prompts or stage 2's class names can take it as well.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from common.encoders.frozen import FrozenEncoder
from common.encoders.text import TextEncoder


@dataclass
class TextEmbeddings:
    """Pooled and per-token text embeddings.

    Attributes:
        pooled: ``(N, D)`` pooled embedding (not normalised).
        tokens: ``(N, L, D)`` last hidden states.
        mask: ``(N, L)`` bool, True for real (non-padding) tokens.
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor


def write_clip_tokenizer(folder: str | os.PathLike, model_max_length: int = 77) -> Path:
    """Writes CLIP's BPE tokenizer files (the vocabulary every OpenAI CLIP model uses) into ``folder``.

    The vocabulary and merges are taken from open_clip's bundled ``bpe_simple_vocab_16e6.txt.gz``, so this
    works offline and gives the same ids as ``openai/clip-vit-large-patch14``'s tokenizer.

    Returns:
        ``folder``.
    """
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    simple = SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in simple.encoder.items()}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    merges = sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(f"{a} {b}" for (a, b), _ in merges) + "\n"
    )
    tok = CLIPTokenizer(
        str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=model_max_length
    )
    tok.save_pretrained(str(folder))
    return folder


class CLIPTextEncoder(TextEncoder):
    """Frozen transformers CLIP text encoder.

    Args:
        pretrained: Local folder or hub id (``"openai/clip-vit-large-patch14"``,
            ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` with ``subfolder="text_encoder"``).
        subfolder: Sub-folder of the model weights.
        tokenizer: Folder/hub id of the tokenizer; ``None`` uses ``pretrained`` (with ``tokenizer_subfolder``),
            and falls back to the BPE vocabulary bundled with open_clip when that has no tokenizer files.
        tokenizer_subfolder: Sub-folder of the tokenizer (``"tokenizer"`` for an SD repo).
        max_length: Token sequence length ``L`` (77 for CLIP).
        local_files_only: Never download (default: follows ``HF_HUB_OFFLINE``).
    """

    def __init__(
        self,
        pretrained: str | os.PathLike = "openai/clip-vit-large-patch14",
        subfolder: str | None = None,
        tokenizer: str | os.PathLike | None = None,
        tokenizer_subfolder: str | None = None,
        max_length: int = 77,
        local_files_only: bool | None = None,
    ) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer

        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        self.pretrained = os.fspath(pretrained)
        self.max_length = max_length
        model = CLIPTextModel.from_pretrained(
            self.pretrained, subfolder=subfolder or "", local_files_only=local_files_only
        )
        self.model = FrozenEncoder(model)
        self.dim = int(model.config.hidden_size)
        tok_source = os.fspath(tokenizer) if tokenizer is not None else self.pretrained
        tok_sub = tokenizer_subfolder if tokenizer is not None or tokenizer_subfolder else subfolder
        tok_dir = Path(tok_source) / (tok_sub or "")
        if tokenizer is None and Path(tok_source).is_dir() and not any(
            (tok_dir / f).is_file() for f in ("vocab.json", "tokenizer.json")
        ):
            # a local model folder without tokenizer files: CLIP's BPE vocabulary, bundled with open_clip
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                self.tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp, max_length)))
        else:
            self.tokenizer = CLIPTokenizer.from_pretrained(
                tok_source, subfolder=tok_sub or "", local_files_only=local_files_only
            )

    def _tokenize(self, texts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            texts, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {
            "input_ids": batch["input_ids"].to(device),
            "attention_mask": batch["attention_mask"].to(device),
        }

    def _encode_batch(self, texts: list[str], device: torch.device) -> torch.Tensor:
        return self.model(**self._tokenize(texts, device)).pooler_output  # (n, D)

    def encode_text(self, texts: Sequence[str]) -> TextEmbeddings:
        """Pooled embedding and full hidden-state sequence of each text.

        Args:
            texts: ``N`` strings.

        Returns:
            :class:`TextEmbeddings` with ``pooled`` ``(N, D)``, ``tokens`` ``(N, L, D)``, ``mask`` ``(N, L)``, float32,
            not normalised, on the encoder's device.
        """
        texts = list(texts)
        with torch.inference_mode(False), torch.no_grad():
            batch = self._tokenize(texts, self.device)
            out = self.model(**batch)
            return TextEmbeddings(
                pooled=out.pooler_output.float().clone(),  # (N, D)
                tokens=out.last_hidden_state.float().clone(),  # (N, L, D)
                mask=batch["attention_mask"].bool().clone(),  # (N, L)
            )

    def extra_repr(self) -> str:
        return f"pretrained={self.pretrained!r}, dim={self.dim}, max_length={self.max_length}"


def tiny_clip_text_model(folder: str | os.PathLike, hidden_size: int = 32, seed: int = 0) -> Path:
    """Saves a tiny random ``CLIPTextModel`` + CLIP tokenizer to ``folder`` (for tests and offline demos).

    ``CLIPTextEncoder(folder)`` loads it back through the same ``from_pretrained`` path as a real model.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    write_clip_tokenizer(folder)
    cfg = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(cfg)
    model.save_pretrained(str(folder))
    return folder


__all__ = ["CLIPTextEncoder", "TextEmbeddings", "tiny_clip_text_model", "write_clip_tokenizer"]
