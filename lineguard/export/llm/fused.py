"""The decoder built node by node with ONNX Runtime's fused operators, from the checkpoint's weights.

The traced graph (``graph.py``) costs ~115 small nodes per layer — shape arithmetic,
rotary slices, mask broadcasts — and at one token per step their dispatch costs as much as
the 4-bit matrix products. Here each layer is ~10 nodes, as onnxruntime-genai builds it:

    SkipSimplifiedLayerNorm → MatMul(q|k|v) → GroupQueryAttention (rotary, cache, GQA, causal)
    → MatMul(o) → SkipSimplifiedLayerNorm → MatMul(gate|up) → act(gate)·up → MatMul(down)

Same inputs and outputs as the traced graph, so the runtime does not know which it runs.
The rotary tables are taken from the model's own rotary module, so every RoPE scaling
transformers implements gives the same angles. Families or options outside what is built
here raise ``Unsupported`` and the exporter falls back to the traced graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from lineguard.export.llm.checkpoint import Checkpoint
from lineguard.export.llm.int4 import save_model

MAX_CONTEXT = 32768  # rotary table rows; prompts + explanations are far shorter
ACTS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh", "gelu": "gelu"}


class Unsupported(Exception):
    """This checkpoint needs the traced graph (the reason says why)."""


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str | None = None,
           **attrs: Any) -> list[str]:
        self._n += 1
        base = name or f"{op}_{self._n}"
        outs = [f"{base}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=base, domain=domain or None, **attrs))
        return outs


def rotary_tables(model: torch.nn.Module, ck: Checkpoint) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin [positions, head_dim/2] from the model's rotary module (its scaling included)."""
    cfg = ck.config
    n = min(int(cfg.get("max_position_embeddings") or MAX_CONTEXT), MAX_CONTEXT)
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) in ("longrope", "dynamic"):
        # these switch tables by sequence length; below the original length they are the short ones
        n = min(n, int(cfg.get("original_max_position_embeddings") or n))
    rot = model.model.rotary_emb
    x = torch.zeros(1, 1, ck.head_dim)
    with torch.no_grad():
        cos, sin = rot(x, torch.arange(n)[None])
    half = ck.head_dim // 2
    return _np(cos[0, :, :half]), _np(sin[0, :, :half])


def _check(model: torch.nn.Module, ck: Checkpoint) -> dict[str, Any]:
    cfg = ck.config
    if float(cfg.get("partial_rotary_factor", 1.0) or 1.0) != 1.0:
        raise Unsupported("partial rotary embeddings")
    act = cfg.get("hidden_activation") if ck.model_type == "gemma" and cfg.get("hidden_activation") else cfg.get("hidden_act")
    if act not in ACTS:
        raise Unsupported(f"activation {act!r}")
    for key in ("final_logit_softcapping", "attn_logit_softcapping", "query_pre_attn_scalar"):
        if cfg.get(key):
            raise Unsupported(key)
    if ck.head_dim % 16:  # ORT's GroupQueryAttention kernel refuses other sizes (1.32 checks it at run time)
        raise Unsupported(f"head_dim {ck.head_dim} (GroupQueryAttention needs a multiple of 16)")
    layer = model.model.layers[0].self_attn
    if getattr(layer, "scaling", ck.head_dim ** -0.5) != ck.head_dim ** -0.5:
        raise Unsupported("attention scaling other than 1/sqrt(head_dim)")
    return {"act": ACTS[act]}


def _layer_weights(layer: torch.nn.Module, family: str) -> dict[str, np.ndarray | None]:
    at, mlp = layer.self_attn, layer.mlp
    if family == "phi3":
        qkv_w, qkv_b = _np(at.qkv_proj.weight).T, None
        gate_up = _np(mlp.gate_up_proj.weight).T  # gate first, then up (Phi3MLP chunks it so)
    else:
        qkv_w = np.concatenate([_np(p.weight).T for p in (at.q_proj, at.k_proj, at.v_proj)], axis=1)
        biases = [p.bias for p in (at.q_proj, at.k_proj, at.v_proj)]
        qkv_b = np.concatenate([_np(b) for b in biases]) if all(b is not None for b in biases) else None
        gate_up = np.concatenate([_np(mlp.gate_proj.weight).T, _np(mlp.up_proj.weight).T], axis=1)
    if getattr(at.o_proj, "bias", None) is not None or getattr(mlp.down_proj, "bias", None) is not None:
        raise Unsupported("biases on o_proj/down_proj")
    return {"qkv": qkv_w, "qkv_bias": qkv_b, "o": _np(at.o_proj.weight).T, "gate_up": gate_up,
            "down": _np(mlp.down_proj.weight).T}


def build_fused(model: torch.nn.Module, ck: Checkpoint, path: Path, sliding_window: int | None) -> dict[str, Any]:
    """Write the fused fp32 decoder to ``path``; raise ``Unsupported`` where it cannot be built."""
    if ck.model_type not in ("llama", "qwen2", "mistral", "phi3", "gemma"):
        raise Unsupported(f"family {ck.model_type}")
    opts = _check(model, ck)
    cfg = ck.config
    L, H = ck.n_layers, int(cfg["hidden_size"])
    heads, kvh, hd = int(cfg["num_attention_heads"]), ck.kv_heads, ck.head_dim
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    gemma = ck.model_type == "gemma"
    b = _Builder()

    def norm_w(w: torch.Tensor) -> np.ndarray:
        return _np(w) + 1.0 if gemma else _np(w)  # Gemma scales by (1 + weight)

    # sequence bookkeeping GroupQueryAttention wants: per-row cached length - 1, and the total
    seqlens = b.op("ReduceSum", ["attention_mask", b.const("axes1", np.array([1], np.int64))], keepdims=0)[0]
    seqlens = b.op("Sub", [seqlens, b.const("one64", np.array(1, np.int64))])[0]
    seqlens_k = b.op("Cast", [seqlens], to=TensorProto.INT32)[0]
    shape = b.op("Shape", ["attention_mask"])[0]
    total = b.op("Gather", [shape, b.const("idx1", np.array(1, np.int64))], axis=0)[0]
    total = b.op("Cast", [total], to=TensorProto.INT32)[0]
    cos, sin = rotary_tables(model, ck)
    b.const("cos_cache", cos)
    b.const("sin_cache", sin)

    emb = model.model.embed_tokens.weight
    x = b.op("Gather", [b.const("embed_tokens", _np(emb)), "input_ids"], axis=0)[0]
    if gemma:
        x = b.op("Mul", [x, b.const("embed_scale", np.array(np.float32(H ** 0.5), np.float32))])[0]
    residual = x
    pending = None  # the last sub-block's output, added to the residual by the next norm
    presents = []
    for i, layer in enumerate(model.model.layers):
        w = _layer_weights(layer, ck.model_type)
        p = f"layers.{i}"
        g_in = b.const(f"{p}.input_norm", norm_w(layer.input_layernorm.weight))
        if pending is None:
            h = b.op("SimplifiedLayerNormalization", [residual, g_in], epsilon=eps, axis=-1, stash_type=1,
                     name=f"{p}/input_norm")[0]
        else:
            o = b.op("SkipSimplifiedLayerNormalization", [pending, residual, g_in], n_out=4, domain="com.microsoft",
                     epsilon=eps, name=f"{p}/input_norm")
            h, residual = o[0], o[3]
        qkv = b.op("MatMul", [h, b.const(f"{p}.qkv.weight", w["qkv"])], name=f"{p}/qkv")[0]
        if w["qkv_bias"] is not None:
            qkv = b.op("Add", [qkv, b.const(f"{p}.qkv.bias", w["qkv_bias"])], name=f"{p}/qkv_bias")[0]
        attn = b.op("GroupQueryAttention",
                    [qkv, "", "", f"past.{i}.key", f"past.{i}.value", seqlens_k, total, "cos_cache", "sin_cache"],
                    n_out=3, domain="com.microsoft", name=f"{p}/attn", num_heads=heads, kv_num_heads=kvh,
                    scale=float(hd ** -0.5), do_rotary=1, rotary_interleaved=0,
                    local_window_size=int(sliding_window) if sliding_window else -1)
        presents += [attn[1], attn[2]]
        pending = b.op("MatMul", [attn[0], b.const(f"{p}.o.weight", w["o"])], name=f"{p}/o")[0]
        g_post = b.const(f"{p}.post_norm", norm_w(layer.post_attention_layernorm.weight))
        o = b.op("SkipSimplifiedLayerNormalization", [pending, residual, g_post], n_out=4, domain="com.microsoft",
                 epsilon=eps, name=f"{p}/post_norm")
        h, residual = o[0], o[3]
        gu = b.op("MatMul", [h, b.const(f"{p}.gate_up.weight", w["gate_up"])], name=f"{p}/gate_up")[0]
        inter = w["gate_up"].shape[1] // 2
        gate, up = b.op("Split", [gu, b.const(f"{p}.split", np.array([inter, inter], np.int64))], n_out=2, axis=-1)
        if opts["act"] == "silu":
            a = b.op("Mul", [gate, b.op("Sigmoid", [gate])[0]])[0]
        elif opts["act"] == "gelu_tanh":
            a = b.op("FastGelu", [gate], domain="com.microsoft")[0]
        else:
            a = b.op("Gelu", [gate], domain="com.microsoft")[0]
        pending = b.op("MatMul", [b.op("Mul", [a, up])[0], b.const(f"{p}.down.weight", w["down"])], name=f"{p}/down")[0]
    o = b.op("SkipSimplifiedLayerNormalization", [pending, residual, b.const("final_norm", norm_w(model.model.norm.weight))],
             n_out=4, domain="com.microsoft", epsilon=eps, name="final_norm")
    last = b.op("Slice", [o[0], b.const("s_start", np.array([-1], np.int64)), b.const("s_end", np.array([2**62], np.int64)),
                          b.const("s_axis", np.array([1], np.int64))])[0]
    # The head gets its own initializer even when tied to the embeddings, so it quantizes too.
    head = b.op("MatMul", [last, b.const("lm_head.weight", _np(model.lm_head.weight).T)], name="lm_head")[0]
    b.nodes.append(helper.make_node("Identity", [head], ["logits"], name="logits"))
    for i, (k, v) in enumerate(zip(presents[::2], presents[1::2])):
        b.nodes.append(helper.make_node("Identity", [k], [f"present.{i}.key"], name=f"present.{i}.key"))
        b.nodes.append(helper.make_node("Identity", [v], [f"present.{i}.value"], name=f"present.{i}.value"))

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("input_ids", i64, ["batch", "seq"]),
              helper.make_tensor_value_info("attention_mask", i64, ["batch", "total"]),
              helper.make_tensor_value_info("position_ids", i64, ["batch", "seq"])]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", 1, int(cfg["vocab_size"])])]
    for i in range(L):
        for k in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past.{i}.{k}", f32, ["batch", kvh, "past", hd]))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{k}", f32, ["batch", kvh, "total", hd]))
    graph = helper.make_graph(b.nodes, "lineguard_decoder", inputs, outputs, b.inits)
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                                    ir_version=9, producer_name="lineguard")
    save_model(model_proto, path)
    return {"graph": "fused", "ops": "GroupQueryAttention, SkipSimplifiedLayerNormalization, MatMul",
            "nodes": len(b.nodes), "rotary_positions": int(cos.shape[0]), "activation": opts["act"]}
