"""The contrastive losses against references: open_clip's ClipLoss, and a hand-computed
supervised case."""

import math

import pytest
import torch
from torch.nn import functional as F

from injection.training.loss import description_loss, label_loss


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_description_loss_matches_open_clip(seed):
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(seed)
    clip = F.normalize(torch.randn(16, 32, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(16, 32, generator=g, dtype=torch.float64), dim=-1)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    ours = description_loss(clip, text, scale)["description_loss"]
    reference = ClipLoss()(clip, text, scale)
    assert abs(float(ours) - float(reference)) < 1e-6


def test_label_loss_by_hand():
    # three clips, two labels; clips 0 and 1 share label 0
    clip = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    label_text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scale = torch.tensor(2.0)
    got = float(label_loss(clip, label_text, labels, scale)["label_loss"])
    # clip -> text: softmax over the two label texts, logits = 2 * cosine
    def nll(logits, target):
        return -(logits[target] - math.log(sum(math.exp(v) for v in logits)))
    c2t = (nll([2.0, 0.0], 0) + nll([1.2, 1.6], 0) + nll([0.0, 2.0], 1)) / 3
    # text -> clip: label 0's text over the three clips, averaged over its two positives;
    # label 1's text has one positive
    t0, t1 = [2.0, 1.2, 0.0], [0.0, 1.6, 2.0]
    t2c = ((nll(t0, 0) + nll(t0, 1)) / 2 + nll(t1, 2)) / 2
    assert got == pytest.approx((c2t + t2c) / 2, abs=1e-6)


def test_clips_without_a_label_are_left_out():
    clip = F.normalize(torch.randn(4, 8), dim=-1)
    label_text = F.normalize(torch.randn(3, 8), dim=-1)
    full = label_loss(clip[:2], label_text, torch.tensor([0, 2]), torch.tensor(10.0))
    partial = label_loss(clip, label_text, torch.tensor([0, 2, -1, -1]), torch.tensor(10.0))
    assert float(full["label_loss"]) == pytest.approx(float(partial["label_loss"]))


def test_near_copy_descriptions_are_not_each_others_negatives():
    """Clips 0 and 1 have the same description: the loss is InfoNCE with the pairs (0, 1)
    and (1, 0) left out of both softmaxes (by hand), so the copies no longer push each
    other's clips apart; different descriptions (cosine < near_copy) stay negatives."""
    g = torch.Generator().manual_seed(0)
    clip = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(4, 8, generator=g, dtype=torch.float64), dim=-1)
    frozen = torch.randn(4, 6, generator=g, dtype=torch.float64)
    frozen[1] = 2 * frozen[0]  # the same description (embeddings are compared by cosine)
    scale = torch.tensor(3.0, dtype=torch.float64)
    got = float(description_loss(clip, text, scale, frozen, 0.95)["description_loss"])
    logits = (scale * clip @ text.T).tolist()
    skip = {0: {1}, 1: {0}, 2: set(), 3: set()}

    def nll(row, target, left_out):
        kept = [v for j, v in enumerate(row) if j not in left_out]
        return -(row[target] - math.log(sum(math.exp(v) for v in kept)))

    c2t = sum(nll(logits[i], i, skip[i]) for i in range(4)) / 4
    t2c = sum(nll([logits[j][i] for j in range(4)], i, skip[i]) for i in range(4)) / 4
    assert abs(got - (c2t + t2c) / 2) < 1e-9
    unmasked = float(description_loss(clip, text, scale)["description_loss"])
    assert abs(unmasked - float(description_loss(clip, text, scale, frozen, 1.0 + 1e-3)[
        "description_loss"])) < 1e-12 and got < unmasked
