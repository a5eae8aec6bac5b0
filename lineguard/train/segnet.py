"""A small fully convolutional anomaly segmenter (DRAEM's discriminative network, made small
enough to train on a 2-core CPU in minutes), and its deployable form with pre- and
post-processing inside the graph, so the runtime feeds raw uint8 frames."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("batch", "group")


def _block(cin: int, cout: int, stride: int = 1, dilation: int = 1, norm: str = "batch") -> nn.Sequential:
    def n() -> nn.Module:
        return nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(8, cout)

    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False), n(), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), n(), nn.ReLU(inplace=True))


class SegNet(nn.Module):
    """Encoder at 1/2 .. 1/16 of the input, a U-Net decoder back to 1/2; one logit per pixel.

    The deepest stages are dilated: a defect is told from texture by comparing it with a wide
    neighbourhood, which is what the normal-only training teaches.

    BatchNorm (the default) suits one product per expert, as a bundle is. Trained on several
    part types at once, its running statistics fit none of them and the network went blind on
    one type in eval mode; ``norm="group"`` avoids that, but learned slower in our runs.
    """

    def __init__(self, width: int = 24, norm: str = "batch") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm {norm!r}: use one of {NORMS}")
        c = [width, width * 2, width * 3, width * 4]
        self.enc = nn.ModuleList([_block(3, c[0], 2, norm=norm), _block(c[0], c[1], 2, norm=norm),
                                  _block(c[1], c[2], 2, norm=norm), _block(c[2], c[3], 2, dilation=2, norm=norm)])
        self.dec = nn.ModuleList([_block(c[3] + c[2], c[2], norm=norm), _block(c[2] + c[1], c[1], norm=norm),
                                  _block(c[1] + c[0], c[0], norm=norm)])
        self.head = nn.Conv2d(c[0], 1, 1)
        nn.init.constant_(self.head.bias, -4.0)  # start at p≈0.02, the prior of a defect pixel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for stage in self.enc:
            x = stage(x)
            skips.append(x)
        for stage, skip in zip(self.dec, reversed(skips[:-1])):
            x = stage(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.head(x)  # [N,1,H/2,W/2]


MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC (BGR, as OpenCV reads) → float NCHW, as seen in training."""
    x = x.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = int(round(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    return k / k.sum()


class DeployedSegNet(nn.Module):
    """uint8 NHWC frame → (anomaly map [N,1,H,W] in [0,1], score [N]).

    The map is the per-pixel defect probability, upsampled and lightly blurred (σ=``sigma``)
    so one-pixel noise does not make a peak; the score is the map's maximum, as in DRAEM.
    """

    def __init__(self, net: SegNet, sigma: float = 2.0) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("kernel", _gauss_kernel(sigma))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = image.shape[1], image.shape[2]
        prob = torch.sigmoid(self.net(normalize(image)))
        prob = F.interpolate(prob, size=(h, w), mode="bilinear", align_corners=False)
        k = self.kernel
        pad = k.numel() // 2
        prob = F.conv2d(F.pad(prob, (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
        prob = F.conv2d(F.pad(prob, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1))
        return prob, prob.flatten(1).amax(1)
