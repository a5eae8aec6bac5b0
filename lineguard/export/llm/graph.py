"""The traceable decoder step: one graph for prefill and incremental decode.

Inputs  ``input_ids [B, S]``, ``attention_mask [B, P+S]`` (1 = real token), ``position_ids [B, S]``
and ``past.{i}.key/value [B, kv_heads, P, head_dim]`` (P = 0 at prefill).
Outputs ``logits [B, 1, V]`` for the last position only (the LM head over every prompt
position is most of the prefill cost and generation never reads it) and
``present.{i}.key/value [B, kv_heads, P+S, head_dim]``.

The 4-D additive mask is built here from the 2-D one, with plain tensor ops, and handed to
the model: transformers then skips its own mask builders (vmap-based, not traceable).
"""

from __future__ import annotations

import torch
from torch import nn


class DecoderStep(nn.Module):
    def __init__(self, model: nn.Module, sliding_window: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.n_layers = model.config.num_hidden_layers
        self.window = sliding_window

    def causal_mask(self, attention_mask: torch.Tensor, q_len: int | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        total = attention_mask.shape[1]
        q_pos = torch.arange(total - q_len, total, device=attention_mask.device)[:, None]  # absolute query slots
        k_pos = torch.arange(total, device=attention_mask.device)[None, :]
        allowed = k_pos <= q_pos
        if self.window is not None:
            allowed = allowed & (k_pos > q_pos - self.window)
        allowed = allowed[None, None] & attention_mask[:, None, None, :].bool()
        zero = torch.zeros((), dtype=dtype)
        return torch.where(allowed, zero, torch.tensor(torch.finfo(dtype).min, dtype=dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache([(past[2 * i], past[2 * i + 1]) for i in range(self.n_layers)])
        mask = self.causal_mask(attention_mask, input_ids.shape[1], self.model.dtype)
        body = self.model.model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                                past_key_values=cache, use_cache=True)
        hidden = body.last_hidden_state[:, -1:, :]
        logits = self.model.lm_head(hidden)
        soft_cap = getattr(self.model.config, "final_logit_softcapping", None)
        if soft_cap:  # Gemma 2 style capping, applied by the model's own forward after the head
            logits = torch.tanh(logits / soft_cap) * soft_cap
        presents = []
        for layer in body.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (logits.float(), *presents)
