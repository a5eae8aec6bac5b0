"""The embedded default bundle: generated parts → a self-supervised expert, trained here →
imported, calibrated, INT8-quantized; a small SAM trained end to end on a second generated lot,
prompted by that expert; the defect classes fitted on the regions SAM finds in that lot; a small
explainer LM trained on the lot's DDQA corpus, exported to INT4. Cached under ``~/.cache/lineguard`` (or
``--cache`` / ``LINEGUARD_CACHE``) by a key over its settings and the code that makes it, so a
change to either rebuilds it and an unchanged one is reused in a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lineguard.demo.dataset import merge_parts
from lineguard.runtime.bundle import Bundle, BundleWriter
from lineguard.runtime.errors import BundleError, LineguardError

# One product, as on a real line (a bundle is per product). The tile is the default: a textured
# surface like the magnetic tiles of ../shared/data/mtd. Per-part figures: BENCHMARKS.md.
PARTS = "tile"
# The code whose change changes the default bundle (the key hashes these packages' sources).
SOURCES = ("synth", "train", "ddqa", "demo/build.py", "demo/dataset.py", "export/onnx_import.py", "export/sam",
           "export/llm", "calibration", "runtime/bundle", "runtime/stages", "runtime/imageio.py")


# The explainer's prompt: the findings alone, compact. A model of a million parameters learns to
# copy from a short prompt within the build's budget; the lineguard default prompt (for real
# LLMs) is three times as long.
EXPLAINER_PROMPT = {
    "system": "Explain the defect in one sentence, using only the findings.",
    "user": ("Verdict: {{ verdict }} ({{ '%.2f'|format(score) }})\n"
             "{% for r in regions %}"
             "Region {{ loop.index }}: {{ r.cell }}{{ ', ' ~ r['class'] if r.get('class') else '' }}, "
             "{{ '%.1f'|format(100 * r.area_frac) }}% of the image\n"
             "{% endfor %}"),
    # no time budget: the demo's explanations must not depend on how busy the machine is (48 tokens bound them)
    "sampling": {"max_new_tokens": 48, "temperature": 0.0, "top_p": 1.0},
    "constrain": True,  # grounded decoding, recorded in the manifest as export llm records it
}


@dataclass(frozen=True)
class DefaultConfig:
    parts: str = PARTS
    n: int = 60  # normal parts per type (a fifth held out for calibration); test: n/4 per defect type
    size: int = 256
    seed: int = 0
    expert_steps: int = 700  # about 4 minutes on 2 cores; no time cap: a slower machine takes longer, builds the same
    shots: int | None = None  # the lot's labelled defects per type for the classifier (None: all, n/4 per type)
    lot: int = 120  # a second lot (seed + 1): SAM's masks and the explainer's corpus, n/4 per defect type
    sam_arch: str = "custom:96:4:4:1,3"  # segment-anything's classes, a reduced encoder
    sam_size: int = 256
    sam_steps: int = 200  # about 70 s on 2 cores
    sam_lr: float = 1e-3
    explainer_steps: int = 2000  # about 3 minutes on 2 cores; copying from the findings is learned after ~1000


def cache_root(cache: str | Path | None) -> Path:
    return Path(cache or os.environ.get("LINEGUARD_CACHE") or Path.home() / ".cache" / "lineguard")


def build_key(cfg: DefaultConfig) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    repo = Path(__file__).resolve().parents[1]
    for name in SOURCES:
        p = repo / name
        for f in sorted(p.rglob("*.py")) if p.is_dir() else [p]:
            h.update(f.relative_to(repo).as_posix().encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_default(cache: str | Path | None = None, cfg: DefaultConfig | None = None, rebuild: bool = False,
                  progress: bool = True) -> Path:
    """The default bundle's folder, built if missing or stale; each step is kept, so an
    interrupted build resumes where it stopped."""
    cfg = cfg or DefaultConfig()
    key = build_key(cfg)
    home = cache_root(cache) / f"default-{key}"
    bundle = home / "bundle"
    if rebuild:
        shutil.rmtree(home, ignore_errors=True)
    try:
        Bundle.load(bundle)
        return bundle
    except BundleError:
        pass
    try:
        from lineguard.synth.line import make_line
        from lineguard.train.expert import ExpertTrainConfig, train_expert
        from lineguard.train.explainer import ExplainerTrainConfig, train_explainer
    except ImportError:
        raise LineguardError("building the default bundle needs the export extra: pip install 'lineguard[export]'") \
            from None
    home.mkdir(parents=True, exist_ok=True)
    _say(f"building the default bundle in {home} (once; later runs reuse it)")
    times: dict[str, float] = {}
    t_all = time.perf_counter()

    data, line, lot = home / "data", home / "data" / "line", home / "data" / "lot"
    if not (data / "synth.json").is_file():
        t = time.perf_counter()
        _say(f"[1/6] generating the product line ({cfg.parts.replace(',', ', ')}) ...")
        make_line(data, n=cfg.n, parts=cfg.parts, size=cfg.size, seed=cfg.seed, progress=progress, trigger=True)
        merge_parts(data, cfg.parts.split(","), line)
        times["data"] = time.perf_counter() - t
    if not (lot / "corpus.jsonl").is_file():  # its own step: a build stopped here resumes here
        t = time.perf_counter()
        make_lot(lot, cfg, progress)
        times["lot"] = time.perf_counter() - t

    onnx = home / "expert.onnx"
    if not onnx.with_suffix(".json").is_file():
        t = time.perf_counter()
        _say("[2/6] training the expert from scratch: synthetic anomalies on normal parts (no pretrained weights) ...")
        train_expert(line / "train" / "good", onnx,
                     ExpertTrainConfig(size=cfg.size, crop=min(128, cfg.size), steps=cfg.expert_steps,
                                       seed=cfg.seed), progress=progress)
        times["expert"] = time.perf_counter() - t

    llm = home / "explainer"
    if not (llm / "lineguard_training.json").is_file():
        t = time.perf_counter()
        _say("[3/6] training the explainer LM from scratch on the lot's DDQA corpus ...")
        # no time cap: cut before it learns to copy (~1000 steps), the explainer writes fluent nonsense
        rec = train_explainer([lot / "corpus.jsonl"], llm, ExplainerTrainConfig(steps=cfg.explainer_steps,
                              seed=cfg.seed), prompt=EXPLAINER_PROMPT, progress=progress)
        g = rec["held_out"]["grounded"]
        _say(f"      explainer: {'n/a' if g is None else f'{100 * g:.0f}%'} of held-out explanations grounded")
        times["explainer"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("[4/6] bundling: import, calibrate on held-out normal parts, INT8 ...")
    work = home / "bundle.partial"
    shutil.rmtree(work, ignore_errors=True)
    _assemble(work, onnx, line, cfg, progress)
    times["bundle"] = time.perf_counter() - t

    t = time.perf_counter()
    _say("[5/6] training SAM end to end on the lot, prompted by the expert; defect classes; the explainer to INT4 ...")
    masks = _add_sam_and_llm(work, line, lot, llm, home, cfg, progress)
    times["sam_llm"] = time.perf_counter() - t

    shutil.rmtree(bundle, ignore_errors=True)
    work.rename(bundle)
    times["total"] = time.perf_counter() - t_all
    trained = trained_record(home, bundle, cfg)
    (home / "build.json").write_text(json.dumps({"key": key, "config": asdict(cfg), "trained": trained,
                                                 "masks_on_line": masks,
                                                 "seconds": {k: round(v, 1) for k, v in times.items()}}, indent=2))
    for old in cache_root(cache).glob("default-*"):  # stale builds: their inputs changed
        if old != home and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    _say(f"[6/6] default bundle ready in {times['total']:.0f} s: {bundle}")
    return bundle


def trained_record(home: Path, bundle: Path, cfg: DefaultConfig) -> dict[str, Any]:
    """Steps each model was trained for (against the steps asked) and the explainer's held-out
    grounding, from the records the trainers wrote (a resumed build did not train them again)."""
    expert = json.loads((home / "expert.json").read_text())["training"]
    explainer = json.loads((home / "explainer" / "lineguard_training.json").read_text())
    sam = Bundle.load(bundle).stage("sam")["variants"]["fp32"]["provenance"]["adapted"]
    return {"expert": {"steps": expert["steps"], "of": cfg.expert_steps, "final_loss": expert["final_loss"]},
            "sam": {"steps": sam["steps"], "of": cfg.sam_steps, "final_loss": sam["final_loss"]},
            "explainer": {"steps": explainer["steps"], "of": cfg.explainer_steps,
                          "final_loss": explainer["final_loss"],
                          "held_out_grounded": explainer["held_out"]["grounded"],
                          "held_out_pairs": explainer["held_out"]["pairs"]}}


def describe_trained(trained: dict[str, Any]) -> str:
    """One line: the models' steps and the explainer's held-out grounding."""
    g = trained["explainer"]["held_out_grounded"]
    return ("default models: " + ", ".join(f"{k} {v['steps']}/{v['of']} steps" for k, v in trained.items())
            + f"; explainer grounded on {'n/a' if g is None else f'{100 * g:.1f}%'} of "
              f"{trained['explainer']['held_out_pairs']} held-out findings")


def _assemble(out: Path, onnx: Path, line: Path, cfg: DefaultConfig, progress: bool) -> None:
    from lineguard.calibration.calibrate import calibrate
    from lineguard.calibration.variants import build_variants
    from lineguard.export.onnx_import import import_onnx_expert

    import_onnx_expert(onnx, out, product="line", color="BGR")
    calibrate(out, normal=str(line / "calib" / "good"), rule="myriad", progress=progress)
    build_variants(out, str(line / "calib" / "good"), str(line), ("int8",), progress=progress)


def make_lot(out: Path, cfg: DefaultConfig, progress: bool) -> None:
    """A second generated lot (another seed, no video): defects with masks for SAM, and their
    DDQA explanation corpus for the explainer. The demo's line is never trained on."""
    from lineguard.ddqa.corpus import build_corpus
    from lineguard.synth.line import make_line

    make_line(out / "parts", n=cfg.lot, parts=cfg.parts, size=cfg.size, seed=cfg.seed + 1, video=False,
              progress=progress)
    merge_parts(out / "parts", cfg.parts.split(","), out / "line")
    build_corpus(out / "line", out / "corpus.jsonl", seed=cfg.seed, prompt=EXPLAINER_PROMPT, progress=progress)


def _add_sam_and_llm(out: Path, line: Path, lot: Path, llm: Path, home: Path, cfg: DefaultConfig,
                     progress: bool) -> dict:
    """SAM trained on the lot (its own copy of the expert prompting it), measured on the line's
    test parts against the expert's own masks; the defect classes fitted on the regions it finds in
    the lot; then the explainer exported to INT4."""
    from lineguard.calibration.classes import fit_classes
    from lineguard.calibration.dataset import test_samples
    from lineguard.calibration.masks import compare_masks
    from lineguard.export.llm.export import export_llm
    from lineguard.train.adapt import adapt_sam
    from lineguard.train.sam import SamAdaptConfig

    sam_cfg = SamAdaptConfig(steps=cfg.sam_steps, lr=cfg.sam_lr, train_encoder=True,
                             mask_prompt=True, seed=cfg.seed)
    adapt_sam(out, lot / "line", home / "sam.pth", sam_cfg, model_type=cfg.sam_arch, image_size=cfg.sam_size,
              scratch=True, holdout=0.0, progress=progress)
    masks = compare_masks(Bundle.load(out), test_samples(line), ("expert", "sam_roi"), progress)
    # the classifier learns the regions SAM finds, as served, on the lot: a second labelled lot, so
    # the line's DC is measured on parts it never saw (5 shots from the line itself gave 42.7 %)
    fit_classes(out, lot / "line", shots=cfg.shots, seed=cfg.seed, progress=progress)
    export_llm(llm, out, ("int4",))
    b = Bundle.load(out)
    with BundleWriter(b.root, base=b) as w:  # the prompt it was trained with (a station may reword it)
        w.manifest["stages"]["llm"]["prompt"] = EXPLAINER_PROMPT
    return masks
