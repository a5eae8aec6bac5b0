"""The LLM stage: export against transformers' generate, INT4, the torch-free decoder, prompts, errors."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import lg

torch = pytest.importorskip("torch", reason="export tests need the export extra (torch)")
transformers = pytest.importorskip("transformers")

from lineguard.export.llm.export import agreement, export_llm  # noqa: E402
from lineguard.export.llm.int4 import merge_projections  # noqa: E402
from lineguard.export.llm.tiny import build_tiny  # noqa: E402
from lineguard.runtime.bundle import Bundle  # noqa: E402
from lineguard.runtime.bundle.engine import EngineOptions  # noqa: E402
from lineguard.runtime.stages.explain import Explainer  # noqa: E402
from lineguard.runtime.stages.llm import CausalLM, Sampling, pick  # noqa: E402
from lineguard.runtime.stages.prompting import PromptBuilder  # noqa: E402

FAMILIES = ["qwen2", "llama", "mistral", "phi3", "gemma"]
CPU = EngineOptions(device="cpu", warmup=0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("llm")
    return {f: build_tiny(root / f, f, seed=i) for i, f in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def qwen_bundle(tiny, tmp_path_factory) -> Path:
    out, _ = export_llm(tiny["qwen2"], tmp_path_factory.mktemp("b") / "qwen", ("int4", "fp32"))
    return out


def _generate(model_dir: Path, ids: list[int], n: int) -> list[int]:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir).eval()  # default attention (sdpa)
    eos = model.generation_config.eos_token_id
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=n, pad_token_id=eos)[0, len(ids):].tolist()
    return [t for t in out if t != eos]


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_export_matches_generate_token_for_token(family, tiny, tmp_path):
    bundle, report = export_llm(tiny[family], tmp_path / "b", ("fp32",))
    assert report["fp32"]["identical_sequences"] == report["fp32"]["prompts"] == 3
    assert report["fp32"]["teacher_forced_agreement"] == 1.0
    b = Bundle.load(bundle)
    st = b.stage("llm")
    assert st["kind"] == "causal_lm" and st["variants"]["fp32"]["parity"] == report["fp32"]
    assert st["prompt"]["system"] and "{{ verdict }}" in st["prompt"]["user"]
    for f in ("tokenizer.json", "generation_config.json", "chat_template.jinja"):
        assert (bundle / "llm" / f).is_file()
    # an independent prompt, the runtime decoder on its own, transformers with its default attention
    tok = transformers.AutoTokenizer.from_pretrained(tiny[family])
    ids = tok("a crack at the bottom-right, 3% of the part", add_special_tokens=False).input_ids
    lm = CausalLM(b.variant_path("llm", "fp32"), st["options"], CPU)
    got = lm.generate(ids, Sampling(max_new_tokens=24, stop_ids=tuple(st["options"]["eos_token_ids"]))).ids
    assert got == _generate(tiny[family], ids, 24)


@pytest.mark.parametrize("graph", ["fused", "traced"])
def test_sliding_window_shorter_than_the_prompt(graph, tiny, tmp_path):
    src = tmp_path / "ck"
    shutil.copytree(tiny["mistral"], src)
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(cfg | {"sliding_window": 5}))  # prompts are 9-16 tokens
    _, report = export_llm(src, tmp_path / "b", ("fp32",), graph=graph)
    assert report["fp32"]["identical_sequences"] == 3 and report["fp32"]["teacher_forced_agreement"] == 1.0


def test_int4_quantizes_every_weight_matmul_including_the_tied_head(qwen_bundle, tiny):
    import onnx

    cfg = json.loads((tiny["qwen2"] / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True
    b = Bundle.load(qwen_bundle)
    v = b.stage("llm")["variants"]["int4"]
    g = onnx.load(str(b.variant_path("llm", "int4"))).graph
    ops = [n.op_type for n in g.node]
    inits = {t.name for t in g.initializer}
    assert ops.count("MatMulNBits") == 2 * 4 + 1  # per layer: qkv, o, gate_up, down; and the LM head
    assert not [n for n in g.node if n.op_type == "MatMul" and n.input[1] in inits]
    q = v["provenance"]["int4"]
    assert q["block_size"] == 32 and q["fp32_weight_matmuls"] == 0  # hidden 64: too short a row for more
    assert v["provenance"]["graph"] == "fused" and "GroupQueryAttention" in ops
    par = v["parity"]
    assert 0.6 <= par["teacher_forced_agreement"] <= 1.0 and len(par["matching_prefix"]) == 3
    assert (qwen_bundle / v["file"]).stat().st_size < (qwen_bundle / "llm/model.fp32.onnx").stat().st_size


@pytest.fixture(scope="module")
def traced_bundle(tiny, tmp_path_factory) -> Path:
    out, report = export_llm(tiny["qwen2"], tmp_path_factory.mktemp("b") / "traced", ("fp32", "int4"), graph="traced")
    assert report["fp32"]["identical_sequences"] == 3
    return out


def test_traced_graph_int4_merges_projections_and_quantizes_the_folded_head(traced_bundle):
    import onnx

    b = Bundle.load(traced_bundle)
    v = b.stage("llm")["variants"]["int4"]
    assert v["provenance"]["graph"] == "traced"
    assert v["provenance"]["int4"]["merged_groups"] == 4 and v["provenance"]["int4"]["fp32_weight_matmuls"] == 0
    g = onnx.load(str(b.variant_path("llm", "int4"))).graph
    assert [n.op_type for n in g.node].count("MatMulNBits") == 9


def test_merging_projections_changes_no_logit(traced_bundle, tmp_path):
    import onnx

    b = Bundle.load(traced_bundle)
    opts = b.stage("llm")["options"]
    m = onnx.load(str(b.variant_path("llm", "fp32")))
    assert merge_projections(m) == 4  # q/k/v (with their biases) and gate/up, in each of 2 layers
    onnx.save(m, str(tmp_path / "merged.onnx"))
    a, c = CausalLM(b.variant_path("llm", "fp32"), opts, CPU), CausalLM(tmp_path / "merged.onnx", opts, CPU)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, opts["vocab_size"], (1, 7))
    la, ca = a.step(ids, 7, a.empty_cache())
    lc, cc = c.step(ids, 7, c.empty_cache())
    np.testing.assert_allclose(la, lc, atol=1e-5)
    for k in ca:
        np.testing.assert_allclose(ca[k], cc[k], atol=1e-5)


def test_sampling_seeded_stops_and_budgets(qwen_bundle):
    b = Bundle.load(qwen_bundle)
    st = b.stage("llm")
    lm = CausalLM(b.variant_path("llm", "int4"), st["options"], CPU)
    ids = [5, 17, 42, 99]
    hot = Sampling(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    a, c = lm.generate(ids, hot).ids, lm.generate(ids, hot).ids
    assert a == c and len(a) == 12
    greedy = lm.generate(ids, Sampling(max_new_tokens=12)).ids
    assert lm.generate(ids, Sampling(max_new_tokens=12, temperature=1.0, top_p=1e-9, seed=1)).ids == greedy
    first = greedy[0]
    stopped = lm.generate(ids, Sampling(max_new_tokens=12, stop_ids=(greedy[3],)))
    assert stopped.stop == "stop_token" and greedy[3] not in stopped.ids and stopped.ids == greedy[: greedy.index(greedy[3])]
    budget = lm.generate(ids, Sampling(max_new_tokens=12, time_budget_s=0.0))
    assert budget.stop == "time_budget" and budget.ids == [first]
    seen: list[int] = []
    lm.generate(ids, Sampling(max_new_tokens=5), seen.append)
    assert seen == greedy[:5]
    with pytest.raises(ValueError, match="top_p"):
        lm.generate(ids, Sampling(top_p=0.0))


def test_generation_stops_at_the_end_of_the_context(qwen_bundle):
    b = Bundle.load(qwen_bundle)
    opts = b.stage("llm")["options"]
    assert opts["max_context"] == 512  # the tiny model's max_position_embeddings (= rotary table rows)
    lm = CausalLM(b.variant_path("llm", "int4"), opts, CPU)
    g = lm.generate([7] * 510, Sampling(max_new_tokens=10))
    assert g.stop == "context" and len(g.ids) == 3  # positions 510 and 511 were the last to compute
    with pytest.raises(ValueError, match="513 tokens does not fit the model's context of 512"):
        lm.generate([7] * 513, Sampling())


def test_top_p_keeps_the_smallest_head_reaching_p():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    picks = {pick(logits, Sampling(temperature=1.0, top_p=0.7), rng) for _ in range(300)}
    assert picks == {0, 1}  # 0.5 < 0.7 ≤ 0.8: the first two, never the tail
    counts = np.bincount([pick(logits, Sampling(temperature=1.0), rng) for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_prompt_tokens_match_apply_chat_template(qwen_bundle, tiny):
    tok = transformers.AutoTokenizer.from_pretrained(tiny["qwen2"])
    ex = Explainer(Bundle.load(qwen_bundle), "fp32", CPU)
    findings = {"product": "tile", "verdict": "defect", "score": 0.83, "size": [128, 128],
                "regions": [{"cell": "top-left", "box_norm": ["0.05", "0.05", "0.20", "0.18"], "box": [6, 6, 26, 23],
                             "area_frac": 0.021, "peak": 0.91, "class": "scratch"}]}
    msgs = ex.prompts.messages(findings)
    assert "top-left" in msgs[1]["content"] and "type scratch" in msgs[1]["content"] and "2.1%" in msgs[1]["content"]
    ref = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    assert ex.prompt_ids(findings) == list(ref)


def test_a_template_refusing_system_turns_gets_it_folded_in():
    tmpl = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
            "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[model] {% endif %}")
    pb = PromptBuilder({"system": "S", "user": "U {{ verdict }}"}, tmpl, {})
    assert pb.render(pb.messages({"verdict": "defect"})) == "[user] S\n\nU defect\n[model] "


def test_explanations_of_inspected_frames_stream_and_are_checked(tiny, bundle_dir, synth, tmp_path):
    # an expert bundle, calibrated, with the LLM stage added: inspect --explain through the CLI
    b = tmp_path / "full"
    shutil.copytree(bundle_dir, b)
    assert lg("calibrate", b, "--normal", synth / "train" / "good", "--rule", "manual", "--threshold", "0").returncode == 0
    export_llm(tiny["qwen2"], b, ("int4",))
    r = lg("inspect", b, synth / "test" / "blob", "--explain", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res and all(x["verdict"] == "defect" for x in res)
    for x in res:
        e = x["explanation"]
        assert e["precision"] == "int4" and e["new_tokens"] >= 1 and isinstance(e["consistent"], bool)
        assert e["prompt_tokens"] > 20 and e["stop"] in ("stop_token", "max_new_tokens", "time_budget", "constraint")
        # random weights, constrained by default: still nothing wrong, and what it must say is said
        assert e["constrained"] and e["consistent"] and e["complete"], e
    ex = Explainer(Bundle.load(b), opts=CPU)
    chunks: list[str] = []
    e = ex.explain(res[0], chunks.append, max_new_tokens=8, constrain=False)
    assert "".join(chunks).strip() == e["text"] and e["source"] == "model" and not e["constrained"]


def test_agreement_counts_a_wrong_model(qwen_bundle, tiny, tmp_path):
    # the same graph scored against another model's tokens: the metric has to notice
    b = Bundle.load(qwen_bundle)
    lm = CausalLM(b.variant_path("llm", "fp32"), b.stage("llm")["options"], CPU)
    ids = [[5, 6, 7], [9, 10]]
    mine = [lm.generate(p, Sampling(max_new_tokens=32)).ids for p in ids]
    other = [[(t + 1) % 384 for t in r] for r in mine]
    assert agreement(lm, ids, mine, [])["teacher_forced_agreement"] == 1.0
    bad = agreement(lm, ids, other, [])
    assert bad["teacher_forced_agreement"] == 0.0 and bad["identical_sequences"] == 0


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", ["arch", "tokenizer", "shard", "config"])
def test_bad_checkpoints_are_refused_in_one_line_and_the_bundle_kept(case, tiny, qwen_bundle, tmp_path):
    src = tmp_path / "ck"
    shutil.copytree(tiny["llama"], src)
    if case == "arch":
        cfg = json.loads((src / "config.json").read_text())
        (src / "config.json").write_text(json.dumps(cfg | {"model_type": "gpt2"}))
        want = "model_type 'gpt2' is not supported (supported: Llama (llama), Qwen2 (qwen2), Phi-3"
    elif case == "tokenizer":
        (src / "tokenizer.json").unlink()
        want = "no tokenizer files (tokenizer.json missing"
    elif case == "shard":
        (src / "model.safetensors").rename(src / "model-00001-of-00002.safetensors")
        index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}}
        (src / "model.safetensors.index.json").write_text(json.dumps(index))
        want = "missing 1 of 2 shards listed in model.safetensors.index.json (model-00002-of-00002.safetensors)"
    else:
        (src / "config.json").write_text("{not json")
        want = "config.json: not valid JSON"
    b = tmp_path / "bundle"
    shutil.copytree(qwen_bundle, b)
    before = _digest(b)
    r = lg("export", "llm", "--model", src, "--bundle", b)
    assert r.returncode == 1 and want in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _digest(b) == before


def test_bad_precision_and_nf4_without_cuda_say_why(tiny, tmp_path):
    r = lg("export", "llm", "--model", tiny["llama"], "--bundle", tmp_path / "b", "--precision", "int3")
    assert r.returncode == 1 and "choose from fp32, fp16, int4" in r.stderr
    if not torch.cuda.is_available():
        r = lg("export", "llm", "--model", tiny["llama"], "--bundle", tmp_path / "b", "--nf4")
        assert r.returncode == 1 and ("no CUDA device" in r.stderr or "bitsandbytes is not installed" in r.stderr)
        assert not (tmp_path / "b").exists()


@pytest.mark.gpu
def test_nf4_on_a_cuda_station(tiny, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes NF4 needs the bitsandbytes package")
    if not torch.cuda.is_available():
        pytest.skip("bitsandbytes NF4 needs a CUDA device (none here)")
    _, report = export_llm(tiny["llama"], tmp_path / "b", ("int4",), nf4=True)
    assert 0.0 <= report["nf4"]["teacher_forced_agreement"] <= 1.0 and report["nf4"]["tok_s"] > 0
    assert Bundle.load(tmp_path / "b").stage("llm")["nf4"] == report["nf4"]


def test_the_prompt_is_edited_in_the_manifest_and_a_broken_one_is_named(qwen_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(qwen_bundle, b)
    m = json.loads((b / "manifest.json").read_text())
    m["stages"]["llm"]["prompt"] |= {"system": "Be terse.", "user": "Verdict {{ verdict }} at {{ regions[0].cell }}."}
    (b / "manifest.json").write_text(json.dumps(m))
    ex = Explainer(Bundle.load(b), opts=CPU)  # hashes still verify: the prompt is not a file
    f = {"product": "p", "verdict": "defect", "score": 0.9, "size": [10, 10],
         "regions": [{"cell": "center", "box": [3, 3, 6, 6], "box_norm": [], "area_frac": 0.1, "peak": 1.0}]}
    assert ex.prompts.messages(f) == [{"role": "system", "content": "Be terse."},
                                      {"role": "user", "content": "Verdict defect at center."}]
    m["stages"]["llm"]["prompt"]["user"] = "{% for r in regions %}unclosed"
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="manifest.json: stages.llm.prompt or the chat template does not parse"):
        Explainer(Bundle.load(b), opts=CPU)
    m["stages"]["llm"]["prompt"]["user"] = "ok"
    m["stages"]["llm"]["prompt"]["sampling"] = {"top_p": 2}
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(Exception, match="stages.llm.prompt.sampling: top_p must be in"):
        Explainer(Bundle.load(b), opts=CPU)


def _dequantize_rows(q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, ids: np.ndarray) -> np.ndarray:
    """MatMulNBits' 4-bit layout by hand: low nibble first; zero point 8 unless stored (packed the same way)."""
    v, nb, half = q.shape
    vals = np.stack([q & 0x0F, q >> 4], axis=-1).reshape(v, nb, 2 * half).astype(np.float32)
    if zp is None:
        z = np.full((v, nb), 8.0, np.float32)
    else:
        z = np.stack([zp & 0x0F, zp >> 4], axis=-1).reshape(v, -1)[:, :nb].astype(np.float32)
    rows = (vals - z[:, :, None]) * scales.reshape(v, nb)[:, :, None]
    return rows.reshape(v, nb * 2 * half)[ids]


@pytest.mark.parametrize("symmetric", [True, False])
def test_tied_embeddings_are_looked_up_in_the_heads_4bit_blocks(symmetric, tiny, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from lineguard.export.llm.int4 import Int4Config

    export_llm(tiny["qwen2"], tmp_path / "b", ("int4",), Int4Config(symmetric=symmetric))
    b = Bundle.load(tmp_path / "b")
    assert b.stage("llm")["variants"]["int4"]["provenance"]["int4"]["tied_embeddings_shared"] is True
    m = onnx.load(str(b.variant_path("llm", "int4")))
    inits = {t.name: t for t in m.graph.initializer}
    assert "embed_tokens" not in inits  # the fp32 table is gone
    nodes = [n for n in m.graph.node if n.name.startswith("embed/")]
    gbq = nodes[-1]
    assert gbq.op_type == "GatherBlockQuantized" and (len(gbq.input) == 4) != symmetric
    # run just the lookup, and compare with a hand dequantization of the head's blocks
    used = {i for n in nodes for i in n.input if i in inits}
    g = helper.make_graph(nodes, "lookup", [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [1, 5])],
                          [helper.make_tensor_value_info(gbq.output[0], onnx.TensorProto.FLOAT, None)],
                          [inits[i] for i in used])
    sub = helper.make_model(g, opset_imports=list(m.opset_import), ir_version=m.ir_version)
    ids = np.array([[0, 3, 77, 200, 383]])
    got = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    head = next(n for n in m.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("lm_head"))
    q, s = numpy_helper.to_array(inits[head.input[1]]), numpy_helper.to_array(inits[head.input[2]])
    zp = numpy_helper.to_array(inits[head.input[3]]) if len(head.input) > 3 and head.input[3] else None
    np.testing.assert_allclose(got[0], _dequantize_rows(q, s, zp, ids[0]), rtol=1e-6, atol=1e-6)
    # and the dequantized rows are close to the checkpoint's embeddings
    emb = transformers.AutoModelForCausalLM.from_pretrained(tiny["qwen2"]).model.embed_tokens.weight.detach().numpy()
    assert np.abs(got[0] - emb[ids[0]]).max() < 0.1 * np.abs(emb).max()


def test_the_default_int4_block_is_the_largest_that_divides_every_weight():
    """128 where every MatMul weight's input size allows it in 4 blocks or more (Qwen2-0.5B: 896,
    4864), else smaller; 32 for short rows (the small models trained here)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from lineguard.export.llm.int4 import default_block

    def graph(*ks: int) -> onnx.ModelProto:
        inits = [numpy_helper.from_array(np.zeros((k, 8), np.float32), f"w{i}") for i, k in enumerate(ks)]
        nodes = [helper.make_node("MatMul", [f"x{i}", f"w{i}"], [f"y{i}"]) for i in range(len(ks))]
        io = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, k]) for i, k in enumerate(ks)]
        out = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 8]) for i in range(len(ks))]
        return helper.make_model(helper.make_graph(nodes, "g", io, out, inits))

    assert default_block(graph(896, 4864)) == 128
    assert default_block(graph(1536, 8960)) == 128
    assert default_block(graph(384, 768)) == 64  # 128 would leave 3 blocks per row
    assert default_block(graph(128, 384)) == 32  # the demo's explainer
    assert default_block(graph(64, 128)) == 32  # too short for 4 blocks of 32: 32 still (as before)
    assert default_block(graph(48)) == 32
