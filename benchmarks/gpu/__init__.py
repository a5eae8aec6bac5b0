"""GPU station check: every stage per GPU provider, LLM tokens/s, station memory and served rate, one run.

    make gpu-check                    # .venv-gpu with the GPU extras, then this with --out runs/gpu
    make gpu-check DRY=1              # the dry run below, in .venv
    python -m benchmarks.gpu --install               # pip-installs INSTALL into this interpreter's environment
    python -m benchmarks.gpu [--out runs/gpu] [--work DIR] [--providers cuda,trt-fp16,trt-int8,native-fp16,native-int8]
                             [--serve-device cuda] [--duration 5] [--max-latency-ms 250] [--defect-rate 0.05]
    python -m benchmarks.gpu --dry-run [--out DIR]   # every step on the CPU EP with tiny models

Meant for the day a machine with one NVIDIA GPU is lent: it builds a real-size bundle with random
weights (the weights do not change the cost) — a calibrated 256-px PatchCore on wide_resnet50_2
with its TensorRT INT8 calibration table, SAM vit_b at 1024 px (the station's) and at 512 px, a
Qwen2-0.5B-shaped INT4 LLM — and measures, on each provider (CUDA EP, TensorRT EP fp16, TensorRT
EP int8 from the bundle's table, the native TensorRT engine in fp16 and int8):

- each stage's median latency (batch 1) and throughput (the expert at batch 8);
- LLM tokens/s on the same prompts: ORT INT4 on the serving device vs bitsandbytes NF4;
- the whole station's memory (GPU and RSS) with all three stages loaded and a few flagged frames through;
- the station's served verdicts/s with all stages on the GPU (``line_rate``'s sweep).

It writes ``gpu_check.json``, ``gpu_check.md`` (the tables it prints) and ``gpu_check.png`` (stage
latencies per provider) to ``--out``. A provider or step that cannot run here is a row marked
``skipped`` with its reason; one that should run and fails is marked ``failed`` (one line; the
traceback on stderr) and makes the exit code 1. Bundles are cached in ``--work`` (a rerun skips
the build) and TensorRT engines inside them.

``--dry-run`` goes through the same steps and functions on the CPU EP with tiny models (ResNet-18
PatchCore, SAM ``custom:64:2:2:1`` at 256 and 128 px, the tiny LLM of ``export/llm/tiny.py``); it
prints the install instead of running it, and marks the GPU providers and NF4 skipped.

Its modules import only the standard library at the top, so ``--install`` runs in a bare venv:

- ``__main__``: the options; ``run``: the steps in order and the report's fields;
- ``machine``: the install, the GPU libraries on LD_LIBRARY_PATH, nvidia-smi, the run's environment;
- ``bundles``: the sizes (real and dry) and the bundle builds; ``providers``: the providers, why one
  cannot run here, their engine options; ``native_trt``: the native TensorRT engine behind Engine's interface;
- ``steps``: the timed steps, skipped or failed; ``stage_rows``: each stage's latency and throughput;
  ``placement``: which provider ran each node; ``llm_tokens``: ORT INT4 vs NF4 tokens/s;
- ``station``: the station's memory and served rate; ``report``: the table, the plot and the files.
"""
