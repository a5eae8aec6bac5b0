"""The PatchCore graph: uint8 frames in, anomaly map and image score out.

Everything a deployed model needs is inside the module so it travels with the ONNX graph:
cast and normalisation, the backbone, locally aware patch features, nearest-neighbour
distance to the memory bank (in matmul form, chunked so memory stays bounded), the
upsampled and Gaussian-smoothed map, and the image score.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lineguard.export.patchcore.backbone import Backbone

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = int(4.0 * sigma + 0.5)  # the truncation scipy and anomalib use
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


class PatchCore(nn.Module):
    """PatchCore over a ResNet trunk with a fitted memory bank.

    ``forward(x)``: x is uint8 ``[N, H, W, 3]`` in BGR (OpenCV's order), returns
    ``anomaly_map [N, 1, H, W]`` and ``score [N]``. ``embed`` gives the patch features that
    the memory bank is built from.
    """

    def __init__(
        self,
        backbone: Backbone,
        image_size: tuple[int, int],
        bank: torch.Tensor | None = None,
        score_mode: str = "reweight",
        num_neighbors: int = 9,
        sigma: float = 4.0,
        chunk: int = 4096,
    ) -> None:
        super().__init__()
        if score_mode not in ("max", "reweight"):
            raise ValueError(f"score_mode {score_mode!r}: use 'max' or 'reweight'")
        self.backbone = backbone
        self.image_size = tuple(image_size)
        self.score_mode = score_mode
        self.num_neighbors = num_neighbors
        self.chunk = chunk
        # BGR uint8 → RGB normalised as one multiply-add per channel: x*a + b
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("in_scale", (1.0 / (255.0 * std)).view(1, 3, 1, 1))
        self.register_buffer("in_shift", (-mean / std).view(1, 3, 1, 1))
        self.register_buffer("blur", gaussian_kernel1d(sigma))
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)
        self.set_bank(bank if bank is not None else torch.zeros(1, self.feature_dim))

    @property
    def feature_dim(self) -> int:
        return sum(self.backbone.channels)

    def set_bank(self, bank: torch.Tensor) -> None:
        bank = bank.float().contiguous()
        # Stored as -2·bankᵀ with squared norms alongside: each chunk's distances are then one
        # Gemm with a bias (‖b‖² − 2e·b), and ‖e‖² is added after the min, to P values not P×M.
        self.register_buffer("bank", bank)
        self.register_buffer("bank_tm2", (-2.0 * bank).t().contiguous())
        self.register_buffer("bank_sq", (bank * bank).sum(1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC BGR → locally aware patch features ``[N, C, h, w]`` (at layer2's stride)."""
        x = x.permute(0, 3, 1, 2)[:, [2, 1, 0]].float() * self.in_scale + self.in_shift
        f2, f3 = self.backbone(x)
        f2, f3 = self.pool(f2), self.pool(f3)
        f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([f2, f3], dim=1)

    def nearest(self, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distance to, and index of, each row's nearest bank entry; bank in chunks.

        ``e`` is ``[N, P, C]``; returns ``[N, P]`` each.
        """
        n, p, c = e.shape
        flat = e.reshape(n * p, c)
        best_d, best_i = None, None
        m = self.bank_tm2.shape[1]
        for start in range(0, m, self.chunk):  # unrolled at export: bounded peak memory per chunk
            stop = min(start + self.chunk, m)
            d = torch.addmm(self.bank_sq[start:stop], flat, self.bank_tm2[:, start:stop])
            imin = d.argmin(dim=-1, keepdim=True)  # one pass over the matrix, then a gather
            dmin = d.gather(-1, imin).squeeze(-1)
            imin = imin.squeeze(-1) + start
            if best_d is None:
                best_d, best_i = dmin, imin
            else:
                closer = dmin < best_d
                best_d = torch.where(closer, dmin, best_d)
                best_i = torch.where(closer, imin, best_i)
        d2 = (best_d + (flat * flat).sum(-1)).clamp_min(0.0)
        return d2.reshape(n, p), best_i.reshape(n, p)

    def image_score(self, e: torch.Tensor, patch: torch.Tensor, nn_idx: torch.Tensor) -> torch.Tensor:
        """Max patch score, or PatchCore's reweighting of it by how isolated its neighbour is."""
        score, p = patch.max(dim=1)
        if self.score_mode == "max":
            return score
        k = min(self.num_neighbors, self.bank.shape[0])
        rows = torch.arange(e.shape[0])
        m_test = e[rows, p]  # [N, C] the most anomalous patch
        m_star = self.bank[nn_idx[rows, p]]  # [N, C] its nearest bank entry
        d_star = torch.addmm(self.bank_sq, m_star, self.bank_tm2)  # + ‖m*‖², which the ranking ignores
        _, support = torch.topk(d_star, k, dim=1, largest=False)  # m_star's own neighbourhood
        diff = m_test.unsqueeze(1) - self.bank[support]  # [N, k, C]
        dist = (diff * diff).sum(-1).clamp_min(0.0).sqrt()
        weight = 1.0 - torch.softmax(dist, dim=1)[:, 0]
        return weight * score

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.embed(x)
        n, c, h, w = feats.shape
        e = feats.permute(0, 2, 3, 1).reshape(n, h * w, c)
        d2, nn_idx = self.nearest(e)
        patch = d2.sqrt()  # [N, h*w]
        score = self.image_score(e, patch, nn_idx)
        amap = F.interpolate(patch.reshape(n, 1, h, w), size=self.image_size, mode="bilinear", align_corners=False)
        return self.smooth(amap), score

    def smooth(self, amap: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with reflect padding (the radius is capped by the map size)."""
        k = self.blur
        r = min(k.numel() // 2, min(self.image_size) - 1)
        if r < k.numel() // 2:
            k = k[k.numel() // 2 - r : k.numel() // 2 + r + 1]
            k = k / k.sum()
        amap = F.conv2d(F.pad(amap, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(amap, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))

    @staticmethod
    def patches_per_image(image_size: tuple[int, int]) -> int:
        return math.ceil(image_size[0] / 8) * math.ceil(image_size[1] / 8)
