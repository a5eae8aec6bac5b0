"""The loop the trainers share: AdamW with a one-cycle schedule over ``steps``, an optional
time limit, a progress bar with the running loss, and the loss record.

A model is trained for exactly its ``steps``: what is built never depends on how fast or how busy
the machine is. The time limit does not cut training short (a model cut short is a worse model
that looks like the configured one); reaching it fails the run with the steps done."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from lineguard.progress import bar
from lineguard.runtime.errors import LineguardError


class Steps:
    """``for _ in loop: loop.step(loss)``; then ``loop.record()``."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, steps: int, minutes: float = 0.0,
                 desc: str = "train", progress: bool = True, weight_decay: float = 1e-4,
                 clip: float | None = None) -> None:
        self.params = list(params)
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=steps, pct_start=0.1)
        self.steps, self.minutes, self.clip = steps, minutes, clip
        self.desc, self.progress = desc, progress
        self.losses: list[float] = []
        self.t0 = time.perf_counter()

    def __iter__(self) -> Iterator[int]:
        self.t0 = time.perf_counter()
        steps = bar(range(self.steps), desc=self.desc, unit="step", progress=self.progress)
        for i in steps:
            yield i
            if self.losses:
                steps.set_postfix(loss=f"{np.mean(self.losses[-20:]):.3f}")
            if self.minutes and time.perf_counter() - self.t0 > self.minutes * 60 and i + 1 < self.steps:
                raise LineguardError(f"{self.desc}: the {self.minutes:g}-minute limit was reached after {i + 1} of "
                                     f"{self.steps} steps; nothing was written (fewer --steps, or a higher --minutes)")

    def step(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.sched.step()
        self.losses.append(loss.item())

    def record(self) -> dict[str, Any]:
        return {"steps": len(self.losses), "steps_asked": self.steps, "seconds": round(time.perf_counter() - self.t0, 1),
                "first_loss": round(float(np.mean(self.losses[:5])), 4),
                "final_loss": round(float(np.mean(self.losses[-20:])), 4)}
