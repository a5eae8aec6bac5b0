"""``lineguard demo``: build or reuse the default bundle, serve the generated line live, summarise."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from lineguard.demo.build import build_default, describe_trained
from lineguard.demo.live import run_live
from lineguard.demo.report import describe
from lineguard.runtime.bundle import Bundle
from lineguard.runtime.errors import InputError


def line_video(bundle: Path, out: Path, seed: int) -> Path:
    """The default bundle's own line (generated with it); for another bundle, a line made here."""
    own = bundle.parent / "data" / "line.avi"
    if own.is_file():
        return own
    video = out / "line" / "line.avi"
    if not video.is_file():
        from lineguard.synth.line import make_line

        print(f"generating a line video into {video.parent} ...", file=sys.stderr)
        make_line(video.parent, n=8, seed=seed, trigger=True)
    return video


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run_demo(out: str | Path = "lineguard-demo", bundle: str | None = None, duration: float | None = None,
             rate: float = 10.0, cache: str | None = None, rebuild: bool = False, quiet: bool = False,
             seed: int = 0, as_json: bool = False, constrain: bool | None = None, http: str | None = None,
             hold: bool = False) -> int:
    if (duration is not None and duration <= 0) or rate <= 0:
        raise InputError(f"--duration {duration} and --rate {rate} must be positive")
    out = Path(out)
    path = Path(bundle) if bundle else build_default(cache, rebuild=rebuild)
    Bundle.load(path)  # a bad --bundle is refused here, naming its file, before anything starts
    video = line_video(path, out, seed)
    # SIGTERM (kill, a service manager) stops the demo as Ctrl-C does: camera, then server, report
    signal.signal(signal.SIGTERM, _interrupt)
    record = path.parent / "build.json"
    # how the default models came out (steps, held-out grounding): the same on every machine
    extra = {"default_bundle": json.loads(record.read_text()).get("trained")} if not bundle and record.is_file() else {}
    summary = run_live(path, video, out, rate, duration, quiet, extra=extra,
                       serve_args=["--no-constrain"] if constrain is False else [], http=http, hold=hold)
    text = describe(summary) + (f"\n{describe_trained(summary['default_bundle'])}"
                                if summary.get("default_bundle") else "")
    print(json.dumps(summary, indent=2) if as_json else "\n" + text)
    print(f"report: {out}/ (summary.json, summary.png, results.jsonl, results.db, overlays/)", file=sys.stderr)
    return 130 if summary["interrupted"] else 0
