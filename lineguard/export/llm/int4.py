"""INT4 weight-only quantization of an exported decoder (ONNX Runtime's MatMulNBits).

Before quantizing, sibling projections that read the same activation (q/k/v, gate/up) are
merged into one MatMul and split after it: one 4-bit kernel call instead of three reads the
activation once and keeps both cores busy on a wider output. Every weight MatMul then gets
its own 4-bit blocks — the LM head included, which the exporter folds into its own
initializer even when the checkpoint ties it to the embeddings.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

log = logging.getLogger("lineguard.export")


BLOCKS = (128, 64, 32)  # the default's candidates, largest first
MIN_BLOCKS_PER_ROW = 4  # a short row in few blocks is one scale for most of it (see default_block)


@dataclass(frozen=True)
class Int4Config:
    # None: ``default_block`` — 128 for the 0.5–3 B shapes (decodes ~37 % faster than 32 on a
    # CPU), 32 for the small models trained here (measured: benchmarks/llm_blocks.py, llm_speed.py)
    block_size: int | None = None
    symmetric: bool = True
    accuracy_level: int = 4  # 4 = int8 activations on the VNNI/AMX kernels; 0 = fp32 compute
    merge: bool = True
    embeddings: bool = False  # also 4-bit the embedding table (GatherBlockQuantized): smaller, not faster

    def to_dict(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "symmetric": self.symmetric, "accuracy_level": self.accuracy_level,
                "merge_projections": self.merge, "embeddings": self.embeddings}


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            out[i].append(n)
    return out


def merge_projections(model: onnx.ModelProto) -> int:
    """Merge MatMuls that share their activation input and have 2-D weight initializers.

    A bias Add that follows every member (Qwen2's q/k/v) is merged too. Returns the number of
    merged groups.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    cons = _consumers(g)
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2:
            groups[n.input[0]].append(n)
    merged = 0
    for act, members in groups.items():
        if len(members) < 2 or len({tuple(inits[m.input[1]].dims)[0] for m in members}) != 1:
            continue
        weights = [numpy_helper.to_array(inits[m.input[1]]) for m in members]
        adds = [cons[m.output[0]] for m in members]
        bias = None
        if all(len(a) == 1 and a[0].op_type == "Add" for a in adds):
            b_names = [next((i for i in a[0].input if i in inits), None) for a in adds]
            if all(b is not None and len(inits[b].dims) == 1 for b in b_names):
                bias = [numpy_helper.to_array(inits[b]) for b in b_names]
        widths = [w.shape[1] for w in weights]
        base = members[0].name or members[0].output[0]
        w_name, out_name = f"{base}.merged.weight", f"{base}.merged.out"
        g.initializer.append(numpy_helper.from_array(np.concatenate(weights, axis=1), w_name))
        new = [helper.make_node("MatMul", [act, w_name], [out_name], name=f"{base}.merged")]
        split_src = out_name
        if bias is not None:
            b_name = f"{base}.merged.bias"
            g.initializer.append(numpy_helper.from_array(np.concatenate(bias), b_name))
            new.append(helper.make_node("Add", [out_name, b_name], [f"{out_name}.biased"], name=f"{base}.merged.bias"))
            split_src = f"{out_name}.biased"
            outs = [a[0].output[0] for a in adds]
            drop = members + [a[0] for a in adds]
        else:
            outs = [m.output[0] for m in members]
            drop = members
        sizes = f"{base}.merged.split"
        g.initializer.append(numpy_helper.from_array(np.array(widths, np.int64), sizes))
        new.append(helper.make_node("Split", [split_src, sizes], outs, axis=-1, name=f"{base}.merged.split"))
        # Insert where the first member was, so the node list stays topologically sorted.
        pos = min(i for i, n in enumerate(g.node) if n in drop)
        for n in drop:
            g.node.remove(n)
        for k, n in enumerate(new):
            g.node.insert(pos + k, n)
        merged += 1
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    return merged


def share_tied_embeddings(model: onnx.ModelProto, head_fp32: np.ndarray, symmetric: bool) -> bool:
    """Where the embedding table is the LM head's transpose, look tokens up in the head's 4-bit blocks.

    The head's MatMulNBits weight is laid out [vocab, K/block, block/2]: one row per token, the
    layout GatherBlockQuantized reads. The fp32 table (a quarter of a small model's bytes) goes.
    Only for the built graph, whose initializers are named ``embed_tokens`` and ``lm_head.weight``;
    ``head_fp32`` is the head [vocab, K] before quantization, to check the tie exactly.
    """
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    head = next((n for n in g.node if n.op_type == "MatMulNBits" and n.name.startswith("lm_head")), None)
    gather = next((n for n in g.node if n.op_type == "Gather" and n.input[0] == "embed_tokens"), None)
    if head is None or gather is None or "embed_tokens" not in inits:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    q_w, scales = inits[head.input[1]], inits[head.input[2]]
    table = numpy_helper.to_array(inits["embed_tokens"])
    v, k, bs = attrs["N"], attrs["K"], attrs["block_size"]
    if table.shape != (v, k) or k % bs:
        return False
    if not np.array_equal(table, head_fp32):
        return False
    new = [helper.make_node("Reshape", [q_w.name, _const(g, "embed.q4_shape", np.array([v, k // 2], np.int64))],
                            ["embed.q4"], name="embed/reshape")]
    scale_name = scales.name
    if len(scales.dims) == 1:
        new.append(helper.make_node("Reshape", [scales.name, _const(g, "embed.scale_shape", np.array([v, k // bs], np.int64))],
                                    ["embed.scales"], name="embed/reshape_scales"))
        scale_name = "embed.scales"
    inputs = ["embed.q4", gather.input[1], scale_name]
    if not symmetric and len(head.input) > 3 and head.input[3]:
        inputs.append(head.input[3])
    new.append(helper.make_node("GatherBlockQuantized", inputs, list(gather.output), name="embed/gather_q4",
                                domain="com.microsoft", bits=4, block_size=bs, gather_axis=0, quantize_axis=1))
    pos = list(g.node).index(gather)
    g.node.remove(gather)
    for i, n in enumerate(new):
        g.node.insert(pos + i, n)
    g.initializer.remove(inits["embed_tokens"])
    return True


def _const(g: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    g.initializer.append(numpy_helper.from_array(value, name))
    return name


def default_block(model: onnx.ModelProto) -> int:
    """The largest of BLOCKS that divides the input size K of every 2-D weight a MatMul reads and
    leaves the shortest row at least MIN_BLOCKS_PER_ROW blocks; else 32 (padded where K needs it).

    Dividing K keeps the tied embeddings in the head's 4-bit blocks. The row rule is measured: the
    demo's explainer (rows of 128) at block 128 had 4 more of 71 explanations rule-written than at
    32, while the 0.5B shape (rows of 896, 7 blocks) decodes 37 % faster at 128 than at 32.
    """
    inits = {t.name: t for t in model.graph.initializer}
    ks = {int(inits[n.input[1]].dims[0]) for n in model.graph.node
          if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2}
    fits = [b for b in BLOCKS if all(k % b == 0 for k in ks) and min(ks, default=0) >= MIN_BLOCKS_PER_ROW * b]
    return fits[0] if fits else 32


def quantize_int4(src: Path, dst: Path, cfg: Int4Config = Int4Config()) -> dict[str, Any]:
    """Write the INT4 variant of the fp32 graph ``src`` to ``dst`` (external data beside it if large)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    from lineguard.export.quiet import quiet_root_logger

    model = onnx.load(str(src))
    head = next((t for t in model.graph.initializer if t.name == "lm_head.weight"), None)
    head_t = numpy_helper.to_array(head).T if head is not None else None
    merged = merge_projections(model) if cfg.merge else 0
    if cfg.block_size is None:
        cfg = replace(cfg, block_size=default_block(model))
    ops = ("MatMul", "Gather") if cfg.embeddings else ("MatMul",)
    algo = DefaultWeightOnlyQuantConfig(block_size=cfg.block_size, is_symmetric=cfg.symmetric,
                                        accuracy_level=cfg.accuracy_level, op_types_to_quantize=ops,
                                        quant_axes=(("MatMul", 0), ("Gather", 1)))
    with quiet_root_logger():
        q = MatMulNBitsQuantizer(model, algo_config=algo)
        q.process()
    out = q.model.model
    shared = False
    if head_t is not None and not cfg.embeddings:
        shared = share_tied_embeddings(out, head_t, cfg.symmetric)
    n4 = sum(n.op_type == "MatMulNBits" for n in out.graph.node)
    left = sum(n.op_type == "MatMul" and any(i.name == n.input[1] for i in out.graph.initializer)
               for n in out.graph.node)
    save_model(out, dst)
    log.info("int4: %d MatMulNBits (%d merged groups), %d weight MatMuls left in fp32%s", n4, merged, left,
             ", embeddings read from the tied head's 4-bit blocks" if shared else "")
    return {"matmul_nbits": n4, "merged_groups": merged, "fp32_weight_matmuls": left,
            "tied_embeddings_shared": shared} | cfg.to_dict()


def save_model(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save ``model``; past 1.5 GB the weights go to ``<name>.data`` beside it. Returns the files."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    if sum(t.ByteSize() for t in model.graph.initializer) < 1_500_000_000:  # protobuf's own limit is 2 GB
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]
