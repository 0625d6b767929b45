"""Stage-2 matcher and SetCriterion: identity matching and ~0 loss for a perfect prediction, a swapped prediction
matched back, empty targets, class-agnostic matching, deep supervision, and the grounding loss."""

from __future__ import annotations

import pytest
import torch

from diffdefect import HungarianMatcher, SetCriterion, Stage2Output
from diffdefect.stage2.criterion import Grounding, grounding_loss


def targets() -> tuple[torch.Tensor, torch.Tensor]:
    """Three target masks on 32x32 (two squares and the background) and their classes."""
    t = torch.zeros(3, 32, 32)
    t[0, :10, :10] = 1
    t[1, 20:, 18:] = 1
    t[2] = 1 - t[0] - t[1]
    return t, torch.tensor([1, 2, 0])


def prediction(t: torch.Tensor, labels: torch.Tensor, queries: list[int], q: int = 6, k: int = 3) -> Stage2Output:
    """Confident predictions: query ``queries[j]`` predicts target ``j`` (mask and class); the rest no-object."""
    masks = torch.full((1, q, *t.shape[-2:]), -30.0)
    logits = torch.full((1, q, k + 1), -30.0)
    logits[0, :, k] = 30.0
    for j, qi in enumerate(queries):
        masks[0, qi] = t[j] * 60 - 30
        logits[0, qi, k] = -30.0
        logits[0, qi, labels[j]] = 30.0
    return Stage2Output(masks, logits, torch.randn(1, q, 8))


def test_perfect_prediction_matches_identity_and_gives_near_zero_loss() -> None:
    t, labels = targets()
    out = prediction(t, labels, [0, 1, 2])
    (qi, ti), = HungarianMatcher(num_points=2048)(out.pred_masks, out.class_logits, [t], [labels])
    assert qi.tolist() == [0, 1, 2] and ti.tolist() == [0, 1, 2]
    terms = SetCriterion()(out, [t], [labels])
    assert set(terms) == {"mask", "dice", "cls", "total"}
    assert all(float(v) < 1e-6 for v in terms.values()), terms


def test_swapped_prediction_is_matched_back() -> None:
    t, labels = targets()
    out = prediction(t, labels, [4, 0, 2])  # target 0 predicted by query 4, target 1 by query 0
    (qi, ti), = HungarianMatcher(num_points=2048)(out.pred_masks, out.class_logits, [t], [labels])
    assert dict(zip(qi.tolist(), ti.tolist(), strict=True)) == {0: 1, 2: 2, 4: 0}
    assert float(SetCriterion()(out, [t], [labels])["total"]) < 1e-6
    # class-agnostic (masks only) finds the same assignment
    (qa, ta), = HungarianMatcher(num_points=2048)(out.pred_masks, None, [t], None)
    assert dict(zip(qa.tolist(), ta.tolist(), strict=True)) == {0: 1, 2: 2, 4: 0}


def test_wrong_prediction_costs_and_every_term_is_finite_with_gradients() -> None:
    t, labels = targets()
    torch.manual_seed(0)
    masks = torch.randn(2, 5, 16, 16, requires_grad=True)  # lower resolution than the targets: upsampled
    logits = torch.randn(2, 5, 4, requires_grad=True)
    emb = torch.randn(2, 5, 8)
    aux = [Stage2Output(masks * 0.5, logits * 0.5, emb)]
    out = Stage2Output(masks, logits, emb, aux)
    empty = torch.zeros(0, 32, 32)
    terms = SetCriterion()(out, [t, empty], [labels, torch.zeros(0, dtype=torch.long)])
    assert set(terms) == {"mask", "dice", "cls", "aux", "total"}
    assert all(torch.isfinite(v) for v in terms.values()) and float(terms["mask"].detach()) > 0.1
    terms["total"].backward()
    assert masks.grad.abs().sum() > 0 and logits.grad.abs().sum() > 0
    # weights are a dict: the total is their weighted sum
    w = SetCriterion(weights={"mask": 2.0, "dice": 0.0, "cls": 0.0}, deep_supervision=False)
    terms2 = w(out, [t, empty], [labels, torch.zeros(0, dtype=torch.long)])
    torch.testing.assert_close(terms2["total"], 2 * terms2["mask"])


def test_no_target_anywhere_only_trains_no_object() -> None:
    out = Stage2Output(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 3), torch.randn(1, 4, 8))
    terms = SetCriterion(deep_supervision=False)(out, [torch.zeros(0, 8, 8)], [torch.zeros(0, dtype=torch.long)])
    assert float(terms["mask"]) == 0.0 and float(terms["cls"]) > 0


def test_grounding_loss_prefers_aligned_words_and_needs_two_captions() -> None:
    torch.manual_seed(0)
    words = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    z = torch.randn(3, 4, 16) * 0.1
    z[:, 0] = words  # image i has a query on word i
    g = Grounding(words, torch.tensor([0, 1, 2]), torch.eye(3, dtype=torch.bool))
    aligned = grounding_loss(z, g, torch.tensor(10.0))
    shuffled = grounding_loss(z[[1, 2, 0]], g, torch.tensor(10.0))
    assert float(aligned) < float(shuffled)
    one = Grounding(words[:1], torch.tensor([0]), torch.eye(3, dtype=torch.bool))
    assert float(grounding_loss(z, one, torch.tensor(10.0))) == 0.0
    # same noun set = two positives: a uniform target over them
    both = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    assert torch.isfinite(grounding_loss(z, Grounding(words, torch.tensor([0, 1, 2]), both), torch.tensor(10.0)))


def test_matcher_rejects_nothing_and_is_seeded() -> None:
    t, labels = targets()
    out = Stage2Output(torch.randn(1, 6, 32, 32), torch.randn(1, 6, 4), torch.randn(1, 6, 8))
    a = HungarianMatcher(num_points=64, seed=3)(out.pred_masks, out.class_logits, [t], [labels])
    b = HungarianMatcher(num_points=64, seed=3)(out.pred_masks, out.class_logits, [t], [labels])
    assert [x.tolist() for x in a[0]] == [x.tolist() for x in b[0]]
    before = torch.random.get_rng_state()
    HungarianMatcher(num_points=64, seed=3)(out.pred_masks, out.class_logits, [t], [labels])
    assert torch.equal(before, torch.random.get_rng_state())  # the global stream is left alone


@pytest.mark.parametrize("n_targets", [1, 6])
def test_more_or_fewer_targets_than_queries(n_targets: int) -> None:
    t = torch.zeros(n_targets, 8, 8)
    for i in range(n_targets):
        t[i, i % 8, :] = 1
    out = Stage2Output(torch.randn(1, 4, 8, 8), torch.randn(1, 4, 3), torch.randn(1, 4, 8))
    (qi, ti), = HungarianMatcher(num_points=64)(out.pred_masks, out.class_logits, [t], [torch.zeros(n_targets, dtype=torch.long)])
    assert len(qi) == len(ti) == min(4, n_targets) and len(set(qi.tolist())) == len(qi)
