"""Open-vocabulary classification: category names -> text embeddings, and mask embeddings x text / tau.

Prompts are data (this file; filled and ensembled by :mod:`common.prompts`, as CLIP-MDC's): a category name
becomes phrases through :data:`TEMPLATES` (defect names are first expanded with the inspection vocabulary of the
captions, :data:`common.data.captions.DEFECT_TERMS`, e.g. ``"break" -> "edge break"``, so names are worded as stage 1
saw them); the background / defect-free class gets :data:`BACKGROUND_PROMPTS`. A class embedding is the normalised mean of its prompts' normalised embeddings from
the frozen text encoder (CLIP in the paper; any :class:`~common.encoders.text.TextEncoder`).

:class:`OpenVocabClassifier` scores ``(B, Q, D)`` mask embeddings against ``K`` class embeddings:
``logits[..., k] = cos(z_i, T_k) / tau`` with a learnable temperature ``tau`` (initialised at 0.07, CLIP's) and a
learned no-object logit ``cos(z_i, e_void) / tau`` from a learnable void embedding (as ODISE / ZegFormer),
giving ``(B, Q, K + 1)``. Adding a name adds one column and changes no other logit.

:func:`caption_nouns` extracts the grounding nouns of a caption (the defect terms it names, skipping negated
sentences such as "free of defects: no scratches, holes..."), the pseudo-labels of caption-only supervision.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from common.data.captions import DEFECT_TERMS
from common.data.types import NORMAL
from common.data.vocabulary import readable
from common.encoders.text import TextEncoder
from common.prompts import fill_templates, prompt_ensemble

TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "an industrial inspection image showing {}.",
    "a close-up of {} on a surface.",
    "a surface with {}.",
)
BACKGROUND_NAMES = frozenset({NORMAL, "background", "_background_", "free", "normal"})
BACKGROUND_PROMPTS: tuple[str, ...] = (
    "a photo of a clean, defect-free surface.",
    "an industrial inspection image of a flawless surface.",
    "a uniform surface texture without any defect.",
)
_NEGATION = re.compile(r"\b(no|not|without|free of|free from)\b", re.IGNORECASE)


def class_phrase(name: str) -> str:
    """``"break"`` -> ``"edge break"``; ``"metal_nut_scratch"`` -> ``"metal nut scratch"``."""
    return DEFECT_TERMS.get(name.lower(), readable(name))


def class_prompts(name: str, templates: Sequence[str] = TEMPLATES,
                  background_prompts: Sequence[str] = BACKGROUND_PROMPTS, description: str | None = None) -> list[str]:
    """The prompts of one class (background names get ``background_prompts``); a ``description`` (a vocabulary
    entry ``"name: description"``) is worded instead of the name's phrase."""
    if name.lower() in BACKGROUND_NAMES:
        return list(background_prompts)
    return fill_templates(templates, [description or class_phrase(name)])


def default_lexicon(names: Sequence[str] = ()) -> dict[str, str]:
    """Phrase -> canonical name: every :data:`~common.data.captions.DEFECT_TERMS` phrase and key, plus ``names``
    (e.g. a dataset's class names) in their readable form."""
    lexicon = {k: k for k in DEFECT_TERMS}
    for key, phrase in DEFECT_TERMS.items():
        lexicon.setdefault(phrase, key)  # the first name of a phrase wins ("linear scratch" -> "scratch")
    lexicon.pop("defect", None)  # too generic: every caption says "defect"
    for n in names:
        if n.lower() not in BACKGROUND_NAMES:
            lexicon.setdefault(readable(n), n)
    return lexicon


def caption_nouns(caption: str | None, lexicon: dict[str, str] | None = None) -> list[str]:
    """Defect terms named by a caption, as canonical names, in order of appearance, without repeats.

    Args:
        caption: A caption (e.g. from :func:`common.data.captions.caption_for`), or ``None``.
        lexicon: Phrase -> canonical name (default: :func:`default_lexicon`). Longer phrases win ("linear
            scratch" before "scratch").

    Returns:
        Canonical names, e.g. ``["scratch"]``; ``[]`` for a defect-free caption (negated sentences are skipped).
    """
    if not caption:
        return []
    lexicon = default_lexicon() if lexicon is None else lexicon
    phrases = sorted(lexicon, key=len, reverse=True)
    pattern = re.compile(r"\b(" + "|".join(re.escape(p) for p in phrases) + r")\b", re.IGNORECASE)
    found: list[str] = []
    for sentence in re.split(r"(?<=[.;:])\s+", caption):
        if _NEGATION.search(sentence):
            continue
        for m in pattern.finditer(sentence):
            name = lexicon[m.group(1).lower()]
            if name not in found:
                found.append(name)
    return found


class OpenVocabClassifier(nn.Module):
    """Cosine similarity of mask embeddings to class-name embeddings, over a learnable temperature.

    Args:
        embed_dim: Size ``D`` of the text space (the text encoder's ``dim``).
        text_encoder: Frozen text encoder for the names; ``None`` borrows one later with
            :meth:`set_text_encoder` (the feature extractor's, e.g. the stage-1 text encoder).
        templates: Prompt templates of defect classes (``{}`` = the class phrase).
        background_prompts: Prompts of the background / defect-free class.
        tau: Initial temperature (CLIP's 0.07).
        learn_tau: Train the temperature (stored as ``log(1 / tau)``, clamped to ``1 / tau <= 100``).
    """

    def __init__(
        self,
        embed_dim: int,
        text_encoder: TextEncoder | None = None,
        templates: Sequence[str] = TEMPLATES,
        background_prompts: Sequence[str] = BACKGROUND_PROMPTS,
        tau: float = 0.07,
        learn_tau: bool = True,
    ) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)
        self.text_encoder = text_encoder  # registered: moves with the module (its weights stay frozen/unsaved)
        self._borrowed: TextEncoder | None = None
        self.templates = list(templates)
        self.background_prompts = list(background_prompts)
        self.logit_scale = nn.Parameter(torch.tensor(float(1.0 / tau)).log(), requires_grad=learn_tau)
        self.void_embedding = nn.Parameter(torch.randn(self.embed_dim) / self.embed_dim**0.5)
        if text_encoder is not None and int(text_encoder.dim) != self.embed_dim:
            raise ValueError(f"text encoder gives {text_encoder.dim}-d embeddings, classifier expects {embed_dim}")

    def set_text_encoder(self, encoder: TextEncoder) -> None:
        """Borrows ``encoder`` (not registered as a submodule: it belongs to its owner) when none was given."""
        if int(encoder.dim) != self.embed_dim:
            raise ValueError(f"text encoder gives {encoder.dim}-d embeddings, classifier expects {self.embed_dim}")
        object.__setattr__(self, "_borrowed", encoder)  # a plain attribute, not a submodule

    @property
    def encoder(self) -> TextEncoder:
        enc = self.text_encoder if self.text_encoder is not None else self._borrowed
        if enc is None:
            raise ValueError("the classifier has no text encoder: give one or borrow the feature extractor's")
        return enc

    @property
    def scale(self) -> torch.Tensor:
        """The logit scale ``1 / tau`` (scalar, clamped at 100 as CLIP's; in the graph when learnable)."""
        return self.logit_scale.clamp(max=float(torch.tensor(100.0).log())).exp()

    @property
    def tau(self) -> torch.Tensor:
        """The current temperature (scalar)."""
        return 1.0 / self.scale

    @torch.no_grad()
    def encode_names(self, names: Sequence[str], descriptions: Mapping[str, str] | None = None) -> torch.Tensor:
        """Class embeddings of ``names`` (prompt ensemble), ``(K, D)`` L2-normalised, on the encoder's device;
        a name in ``descriptions`` is embedded through its description."""
        descriptions = descriptions or {}
        return prompt_ensemble(self.encoder, [class_prompts(n, self.templates, self.background_prompts,
                                                            descriptions.get(n)) for n in names])

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Plain text embeddings (caption words / nouns, no templates), ``(N, D)`` normalised."""
        return F.normalize(self.encoder.encode(list(texts)).float(), dim=-1)

    def forward(self, mask_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Class logits with the no-object column last.

        Args:
            mask_embeddings: ``(B, Q, D)`` mask embeddings ``z_i``.
            text_embeddings: ``(K, D)`` class embeddings ``T``.

        Returns:
            ``(B, Q, K + 1)``: ``cos(z_i, T_k) / tau`` and the no-object logit ``cos(z_i, e_void) / tau``.
        """
        z = F.normalize(mask_embeddings.float(), dim=-1)  # (B, Q, D)
        t = F.normalize(torch.cat([text_embeddings.to(z), self.void_embedding[None].float()]), dim=-1)  # (K+1, D)
        return self.scale * torch.einsum("bqd,kd->bqk", z, t)  # (B, Q, K + 1)
