"""Torch-free text generation over an exported decoder graph (numpy + onnxruntime).

The graph takes ``input_ids``, ``attention_mask``, ``position_ids`` and the past key/values
and returns the last position's logits and the present key/values (see
``export/llm/graph.py``). Prefill feeds the whole prompt once; each decode step feeds one
token and the cache it got back.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lineguard.runtime.bundle.engine import Engine, EngineOptions

if TYPE_CHECKING:  # only for the annotation: the decoder needs no guard to run
    from lineguard.runtime.stages.constrain import Guard


@dataclass
class Sampling:
    """How to pick tokens. ``temperature == 0`` is greedy (what parity is measured with)."""

    max_new_tokens: int = 96
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()
    time_budget_s: float | None = None  # stop after this long (prefill included), keep what was made

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")


@dataclass
class Generation:
    ids: list[int]
    stop: str  # "stop_token", "max_new_tokens", "time_budget", "context" (the model's length is used up)
    # or "constraint" (the guard allowed none of the best candidates)
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tok_s(self) -> float:
        n = len(self.ids) - 1  # the first token comes out of the prefill
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0


def _probs(logits: np.ndarray, s: Sampling) -> np.ndarray:
    """Temperature, then nucleus (top-p): the distribution a sample is drawn from."""
    z = logits.astype(np.float64) / s.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if s.top_p < 1:
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < s.top_p  # the smallest head whose mass reaches top_p
        mask = np.zeros_like(p, dtype=bool)
        mask[order[keep]] = True
        p = np.where(mask, p, 0.0)
        p /= p.sum()
    return p


def pick(logits: np.ndarray, s: Sampling, rng: np.random.Generator,
         admissible: Callable[[int], bool] | None = None, candidates: int = 64) -> int | None:
    """Greedy, or temperature + nucleus (top-p) sampling, from one logit row.

    With ``admissible``: the best admissible token (greedy), or a sample from the admissible ones
    (a refused token's probability goes to the rest, as masking its logit would). None when none
    of the ``candidates`` best is admissible. Without it, exactly the unconstrained choice.
    """
    if s.temperature == 0:
        tok = int(np.argmax(logits))
        if admissible is None or admissible(tok):
            return tok
        k = min(candidates, logits.size)
        top = np.argpartition(-logits, k - 1)[:k]  # no full sort of a 150k vocabulary per step
        for t in top[np.argsort(-logits[top], kind="stable")]:
            if int(t) != tok and admissible(int(t)):
                return int(t)
        return None
    p = _probs(logits, s)
    for _ in range(candidates):
        tok = int(rng.choice(p.size, p=p))
        if admissible is None or admissible(tok):
            return tok
        p[tok] = 0.0
        if p.sum() <= 0:
            break
        p /= p.sum()
    return None


class CausalLM:
    """One exported decoder. ``layout`` is the stage's ``options`` from the manifest."""

    def __init__(self, path: str | Path, layout: dict[str, Any], opts: EngineOptions | None = None) -> None:
        # Engine's warm-up feeds zeros of every input; the cache inputs need consistent lengths.
        self.engine = Engine(path, dataclasses.replace(opts or EngineOptions(), warmup=0))
        self.n_layers = int(layout["n_layers"])
        self.kv_heads = int(layout["kv_heads"])
        self.head_dim = int(layout["head_dim"])
        self.kv_dtype = np.dtype(layout.get("kv_dtype", "float32"))
        self.max_context = int(layout.get("max_context") or layout.get("max_position_embeddings") or 1 << 30)
        self.past_names = [f"past.{i}.{k}" for i in range(self.n_layers) for k in ("key", "value")]
        self.outputs = ["logits"] + [f"present.{i}.{k}" for i in range(self.n_layers) for k in ("key", "value")]

    def empty_cache(self) -> dict[str, np.ndarray]:
        return {n: np.zeros((1, self.kv_heads, 0, self.head_dim), self.kv_dtype) for n in self.past_names}

    def step(self, ids: np.ndarray, total: int, cache: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Feed ``ids [1, n]`` after ``total - n`` cached tokens; the last logits and the new cache."""
        n = ids.shape[1]
        feeds = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones((1, total), np.int64),
                 "position_ids": np.arange(total - n, total, dtype=np.int64)[None], **cache}
        out = self.engine.session.run(self.outputs, feeds)
        return out[0][0, -1], dict(zip(self.past_names, out[1:]))

    def generate(self, prompt_ids: list[int], sampling: Sampling | None = None,
                 on_token: Callable[[int], None] | None = None, guard: Guard | None = None) -> Generation:
        """``guard``: asked before each token and before stopping (grounded decoding); without it,
        the choice is the plain greedy or sampled one."""
        s = sampling or Sampling()
        s.validate()
        if not prompt_ids:
            raise ValueError("empty prompt: give at least one token")
        if len(prompt_ids) > self.max_context:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit the model's context of {self.max_context}")
        rng = np.random.default_rng(s.seed)
        t0 = time.perf_counter()
        logits, cache = self.step(np.asarray([prompt_ids]), len(prompt_ids), self.empty_cache())
        t1 = time.perf_counter()
        ids: list[int] = []
        total = len(prompt_ids)
        stop = "max_new_tokens"
        def admissible(tok: int) -> bool:
            assert guard is not None
            return guard.may_stop(ids) if tok in s.stop_ids else guard.accepts(ids, tok)

        while True:
            tok = pick(logits, s, rng, admissible if guard else None)
            if tok is None:  # nothing the guard allows among the best candidates
                stop = "constraint"
                break
            if tok in s.stop_ids:
                stop = "stop_token"
                break
            ids.append(tok)
            if on_token:
                on_token(tok)
            if len(ids) >= s.max_new_tokens:
                break
            if total + 1 > self.max_context:  # the next step would sit at position `total`
                stop = "context"
                break
            if s.time_budget_s is not None and time.perf_counter() - t0 >= s.time_budget_s:
                stop = "time_budget"
                break
            total += 1
            logits, cache = self.step(np.asarray([[tok]]), total, cache)
        t2 = time.perf_counter()
        return Generation(ids, stop, len(prompt_ids), t1 - t0, t2 - t1)
