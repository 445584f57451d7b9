"""The two contrastive paths of knowledge injection. Each loss returns `{"name_loss": tensor}`;
the trainer sums them with weights and logs each (open_clip's convention).

Path 1, `description_loss`: symmetric InfoNCE between a clip and its own description (CLIP's
loss; checked against open_clip's ClipLoss in the tests); descriptions that are near copies
of a clip's own (same label, same wording: frequent in MLLM output) are not its negatives.
Path 2, `label_loss`: clip <-> label text as supervised contrast. Every clip is scored
against the texts of all labels in the set; clips that share a label share the positive, so
no clip is pushed away from its own label (no false negatives), and the text side pulls each
label's text towards all its clips in the batch (SupCon's averaging over positives).

In distributed training, features are gathered from every rank with gradients
(`torch.distributed.nn.all_gather`), so each rank's loss is the loss of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gather(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features, in rank order, differentiable; the input alone when not
    distributed."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    if not features.is_floating_point():  # labels: nothing to differentiate
        parts = [torch.empty_like(features) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, features)
        return torch.cat(parts, 0)
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features), 0)


def description_loss(clip: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     text_frozen: torch.Tensor | None = None, near_copy: float = 1.0
                     ) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE: row i of `clip` and of `text` (L2-normalised) are a pair.

    `text_frozen` (the text encoder's own embeddings of the same descriptions): two clips
    whose descriptions are near copies (cosine >= `near_copy`) are not each other's
    negatives, in either direction; without it, every other clip is a negative (CLIP)."""
    clip, text = gather(clip), gather(text)
    logits = logit_scale * clip @ text.T
    if text_frozen is not None:
        frozen = F.normalize(gather(text_frozen).float(), dim=-1)
        copies = frozen @ frozen.T >= near_copy - 1e-6
        copies.fill_diagonal_(False)  # a clip's own description stays its positive
        logits = logits.masked_fill(copies, float("-inf"))
    target = torch.arange(len(clip), device=clip.device)
    loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return {"description_loss": loss}


def label_loss(clip: torch.Tensor, label_text: torch.Tensor, labels: torch.Tensor,
               logit_scale: torch.Tensor) -> dict[str, torch.Tensor]:
    """Supervised contrast between clips and the texts of the K labels.

    clip: [B, D] normalised; label_text: [K, D] normalised (one text per label, e.g. a
    prompt ensemble's renormalised mean); labels: [B] in 0..K-1, or -1 for a clip without
    a label (left out: every rank calls this with its whole batch, so the gather matches).
    clip -> text: cross-entropy over the K label texts (no other clip's label is a negative
    for a clip with the same label, since they share one text).
    text -> clip: for each label present in the batch, the mean log-likelihood of its clips
    among all clips in the batch (SupCon's average over positives)."""
    clip, labels = gather(clip), gather(labels)
    keep = labels >= 0
    if not bool(keep.any()):  # no labels in this batch: zero, but still in the graph
        return {"label_loss": (clip.sum() + label_text.sum()) * 0.0}
    clip, labels = clip[keep], labels[keep]
    logits = logit_scale * clip @ label_text.T  # [B, K]
    clip_to_text = F.cross_entropy(logits, labels)
    log_p = logits.T.log_softmax(dim=1)  # [K, B]: each label text over the batch's clips
    positive = F.one_hot(labels, label_text.shape[0]).T.to(log_p.dtype)  # [K, B]
    present = positive.sum(1) > 0
    text_to_clip = -((log_p * positive).sum(1)[present] / positive.sum(1)[present]).mean()
    return {"label_loss": (clip_to_text + text_to_clip) / 2}
