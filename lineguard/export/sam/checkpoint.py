"""Building SAM from segment-anything's own classes and loading official-format state dicts.

Official checkpoints (vit_b/l/h) load at 1024 px through segment-anything's registry. A reduced
encoder input (e.g. 512) resizes the absolute position embeddings (bicubic) and the global
blocks' relative ones (linear, as segment-anything's own ``get_rel_pos`` does) from the file.
Any state dict in the official format works; ``custom:EMBED:DEPTH:HEADS:G1,G2,...`` names an
encoder the registry does not have (small test models, fine-tuned variants).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything import sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from lineguard.export.state_dict import match_state_dict, read_state_dict
from lineguard.runtime.bundle import sha256_file
from lineguard.runtime.errors import LineguardError

PATCH = 16
PROMPT_DIM = 256


@dataclass(frozen=True)
class SamArch:
    name: str
    embed_dim: int
    depth: int
    heads: int
    global_attn: tuple[int, ...]


ARCHS = {
    "vit_b": SamArch("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
}


def parse_arch(spec: str) -> SamArch:
    """``vit_b``/``vit_l``/``vit_h``, or ``custom:EMBED:DEPTH:HEADS:G1,G2,...``."""
    if spec in ARCHS:
        return ARCHS[spec]
    parts = spec.split(":")
    try:
        if parts[0] != "custom" or len(parts) != 5:
            raise ValueError
        embed, depth, heads = int(parts[1]), int(parts[2]), int(parts[3])
        glob = tuple(int(g) for g in parts[4].split(",") if g)
        if embed % heads or not all(0 <= g < depth for g in glob):
            raise ValueError
    except ValueError:
        raise LineguardError(f"--model-type {spec!r}: use vit_b, vit_l, vit_h or "
                             "custom:EMBED:DEPTH:HEADS:G1,G2 (global-attention block indexes)") from None
    return SamArch(spec, embed, depth, heads, glob)


def build_sam(arch: SamArch, image_size: int = 1024) -> Sam:
    """An untrained SAM of this architecture whose encoder takes ``image_size`` pixels."""
    if image_size % PATCH:
        raise LineguardError(f"--image-size {image_size}: must be a multiple of {PATCH}")
    if arch.name in ARCHS and image_size == 1024:
        return sam_model_registry[arch.name]().eval()  # the official builder, as released
    grid = image_size // PATCH
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.heads, patch_size=PATCH,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=arch.global_attn, window_size=14,
            out_chans=PROMPT_DIM),
        prompt_encoder=PromptEncoder(embed_dim=PROMPT_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(image_size, image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=PROMPT_DIM, mlp_dim=2048,
                                                               num_heads=8),
                                 transformer_dim=PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def _resize_pos(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> list[str]:
    """Resize position embeddings in ``state`` to the model's shapes; returns the keys resized."""
    done = []
    key = "image_encoder.pos_embed"
    if key in state and key in own and state[key].shape != own[key].shape and state[key].shape[-1] == own[key].shape[-1]:
        grid = own[key].shape[1:3]
        state[key] = F.interpolate(state[key].permute(0, 3, 1, 2), size=grid, mode="bicubic",
                                   align_corners=False).permute(0, 2, 3, 1)
        done.append(key)
    for k in list(state):
        if k.endswith((".rel_pos_h", ".rel_pos_w")) and k in own and state[k].shape != own[k].shape \
                and state[k].shape[1] == own[k].shape[1]:
            state[k] = F.interpolate(state[k].t().unsqueeze(0), size=own[k].shape[0], mode="linear").squeeze(0).t()
            done.append(k)
    return done


def load_sam(checkpoint: str | Path, arch: SamArch, image_size: int = 1024) -> tuple[Sam, dict[str, Any]]:
    """Load an official-format state dict (``weights_only=True``); refuse a mismatch in one line."""
    path = Path(checkpoint)
    state = read_state_dict(path, ("model",), "no such checkpoint file")
    model = build_sam(arch, image_size)
    resized: list[str] = []
    match_state_dict(path, state, model.state_dict(), f"SAM {arch.name}",
                     adapt=lambda s, own: resized.extend(_resize_pos(s, own)))
    model.load_state_dict(state)
    digest = sha256_file(path)
    prov = {"checkpoint": str(path.resolve()), "sha256": digest, "model_type": arch.name,
            "image_size": image_size, "resized_from_checkpoint": resized}
    return model.eval(), prov
