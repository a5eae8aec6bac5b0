"""Reading checkpoint files as state dicts, safely, and matching them to a model, in one line each.

Both the PatchCore backbone and SAM load user files: ``weights_only=True`` (no code runs from
a pickle), and any mismatch names the file, the first missing/unexpected key or the key whose
shape differs with the shape the model expects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from lineguard.runtime.errors import LineguardError


def read_state_dict(path: str | Path, wrappers: tuple[str, ...] = ("state_dict", "model"),
                    missing_msg: str = "no such weights file") -> dict[str, torch.Tensor]:
    """A mapping of names to tensors from ``path`` (unwrapping training checkpoints' ``wrappers``)."""
    path = Path(path)
    if not path.is_file():
        raise LineguardError(f"{path}: {missing_msg}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code, not a torch file: all "cannot load"
        raise LineguardError(f"{path}: not a loadable torch state dict ({str(e).splitlines()[0][:120]})") from None
    for key in wrappers:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LineguardError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def match_state_dict(path: str | Path, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], what: str,
                     adapt: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], object] | None = None) -> None:
    """Refuse ``state`` unless it has exactly ``own``'s keys and shapes (after ``adapt``, which may
    resize entries in place, e.g. position embeddings for another input size)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing key {missing[0]!r}" if missing else f"unexpected key {unexpected[0]!r}"
        raise LineguardError(f"{path}: does not match {what} ({first}; {len(missing)} missing, "
                             f"{len(unexpected)} unexpected)")
    if adapt is not None:
        adapt(state, own)
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise LineguardError(f"{path}: {k} has shape {tuple(v.shape)}, {what} expects {tuple(own[k].shape)}")
