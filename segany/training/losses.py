"""SAM's training losses: focal + dice on masks (20:1), MSE between predicted and actual IoU.

All functions take low-res logits (B, M, h, w) and soft targets (B, 1, h, w) in [0, 1] (area-downsampled ground
truth); M is 3 for multimask outputs (only the lowest-loss mask is backpropagated, as SAM) or 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0
IOU_WEIGHT = 1.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Per-mask sigmoid focal loss averaged over pixels: (B, M, h, w), (B, 1 or M, h, w) -> (B, M).

    No alpha class weighting: objects are a small part of most images, and down-weighting the foreground (alpha 0.25)
    kept a short CPU run predicting empty masks for its first hundred steps.
    """
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_t) ** gamma).mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss: (B, M, h, w), (B, 1 or M, h, w) -> (B, M)."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.expand_as(logits).flatten(2)
    inter = (p * t).sum(-1)
    return 1 - (2 * inter + eps) / (p.sum(-1) + t.sum(-1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logit > 0) with the target (> 0.5): (B, M). No gradient."""
    with torch.no_grad():
        pred = logits > 0
        gt = (target > 0.5).expand_as(pred)
        inter = (pred & gt).flatten(2).sum(-1).float()
        union = (pred | gt).flatten(2).sum(-1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(
    logits: torch.Tensor,
    iou_pred: torch.Tensor,
    target: torch.Tensor,
    focal_weight: float = FOCAL_WEIGHT,
    dice_weight: float = DICE_WEIGHT,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss of one decoder call.

    Args:
        logits: (B, M, h, w) float low-res mask logits.
        iou_pred: (B, M) predicted IoU.
        target: (B, 1, h, w) float ground truth in [0, 1] at the logits' resolution.
        focal_weight, dice_weight: weights of the two mask terms (SAM: 20 and 1).
    Returns:
        (scalar loss, (B,) IoU of the selected mask, (B, M) IoU of every mask). The mask term uses only the mask with
        the lowest focal + dice loss; the IoU head is trained on all M outputs so its scores rank them.
    """
    logits = logits.float()
    iou_pred = iou_pred.float()
    per_mask = focal_weight * focal_loss(logits, target) + dice_weight * dice_loss(logits, target)
    best = per_mask.argmin(dim=1)
    mask_term = per_mask.gather(1, best[:, None]).mean()
    ious = mask_iou(logits, target)
    iou_term = F.mse_loss(iou_pred, ious)
    selected = ious.gather(1, best[:, None])[:, 0]
    return mask_term + IOU_WEIGHT * iou_term, selected, ious
