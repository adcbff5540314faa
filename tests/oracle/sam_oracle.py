"""Build the public segment-anything model with random weights and save it as a released-layout checkpoint."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch


def public_sam(encoder: str, seed: int = 0):
    """Public ``Sam`` with every parameter perturbed (zero-initialised tables would hide bugs). eval mode."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    if encoder == "tiny":
        image_encoder = ImageEncoderViT(
            depth=2, embed_dim=64, img_size=1024, mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=(1,), window_size=14,
            out_chans=256,
        )
        sam = Sam(
            image_encoder=image_encoder,
            prompt_encoder=PromptEncoder(
                embed_dim=256, image_embedding_size=(64, 64), input_image_size=(1024, 1024), mask_in_chans=16
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
                transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256,
            ),
            pixel_mean=[123.675, 116.28, 103.53],
            pixel_std=[58.395, 57.12, 57.375],
        )
    else:
        from segment_anything import sam_model_registry

        sam = sam_model_registry[encoder](checkpoint=None)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return sam.eval()


def public_mobile_sam(seed: int = 0):
    """Public MobileSAM (vit_t) with perturbed weights, BatchNorm statistics and attention-bias tables."""
    from mobile_sam import sam_model_registry

    torch.manual_seed(seed)
    sam = sam_model_registry["vit_t"](checkpoint=None)
    with torch.no_grad():
        for p in sam.parameters():
            p.add_(0.02 * torch.randn_like(p))
        for name, b in sam.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.1 * torch.rand_like(b))
    sam.train(False)  # recomputes MobileSAM's cached attention biases from the perturbed tables
    return sam.eval()


def save_checkpoint(sam, path: Path) -> Path:
    torch.save(sam.state_dict(), path)
    return path
