"""The three SAM graphs a bundle carries, as torch modules to export.

- ``EncoderGraph``: uint8 BGR frame ``[1, h, w, 3]`` (longest side already resized to the
  encoder size by the runtime) → image embeddings. Colour flip, SAM's pixel normalisation and the
  bottom-right zero padding are in the graph, so the runtime feeds decoded frames.
- ``DecoderGraph``: embeddings + points/box corners (labels 1 fg, 0 bg, 2/3 box corners, −1
  padding) + optional previous low-res mask → low-res mask logits for all 4 mask tokens and
  their predicted IoU. The upscale and crop to the frame happen in the runtime (OpenCV), so one
  graph serves every frame size.
- ``SparseDecoderGraph``: the same decoder fed sparse prompt embeddings directly (EIAD's path,
  where a language model's [SEG] embedding, projected into SAM's prompt space, asks for the mask).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import nn


class EncoderGraph(nn.Module):
    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.encoder = sam.image_encoder
        self.size = sam.image_encoder.img_size
        self.register_buffer("mean", sam.pixel_mean.view(1, 3, 1, 1))
        self.register_buffer("std", sam.pixel_std.view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2)[:, [2, 1, 0]].float()
        x = (x - self.mean) / self.std
        h, w = x.shape[-2:]
        x = F.pad(x, (0, self.size - w, 0, self.size - h))  # SAM pads after normalising: zeros
        return self.encoder(x)


class _Decoder(nn.Module):
    def __init__(self, sam: Sam) -> None:
        super().__init__()
        self.prompt = sam.prompt_encoder
        self.decoder = sam.mask_decoder
        self.size = float(sam.image_encoder.img_size)

    def dense(self, mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> torch.Tensor:
        """The previous mask's embedding where one is given, else SAM's "no mask" embedding."""
        with_mask = self.prompt.mask_downscaling(mask_input)
        without = self.prompt.no_mask_embed.weight.reshape(1, -1, 1, 1)
        has = has_mask_input.reshape(-1, 1, 1, 1)
        return has * with_mask + (1.0 - has) * without

    def decode(self, image_embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor) -> tuple:
        masks, iou = self.decoder.predict_masks(image_embeddings=image_embeddings,
                                                image_pe=self.prompt.get_dense_pe(),
                                                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense)
        return masks, iou


class DecoderGraph(_Decoder):
    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """SAM's point and box-corner embedding, written with masks instead of in-place indexing."""
        coords = (coords + 0.5) / self.size
        pe = self.prompt.pe_layer._pe_encoding(coords)
        labels = labels.unsqueeze(-1)
        pe = pe * (labels != -1).float() + self.prompt.not_a_point_embed.weight * (labels == -1).float()
        for i, emb in enumerate(self.prompt.point_embeddings):
            pe = pe + emb.weight * (labels == i).float()
        return pe

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor,
                mask_input: torch.Tensor, has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sparse = self.embed_points(point_coords, point_labels)
        return self.decode(image_embeddings, sparse, self.dense(mask_input, has_mask_input))


class SparseDecoderGraph(_Decoder):
    def forward(self, image_embeddings: torch.Tensor, sparse_embeddings: torch.Tensor, mask_input: torch.Tensor,
                has_mask_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(image_embeddings, sparse_embeddings, self.dense(mask_input, has_mask_input))
