"""Loading, verifying and atomically writing bundles.

The runtime refuses a bundle whose files do not match the manifest; writers build the new
bundle in a sibling temp directory and swap it in, so an interrupted export or calibration
never leaves half a bundle behind.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from lineguard import __version__
from lineguard.runtime.bundle.manifest import FORMAT, FORMAT_VERSION, MANIFEST, InputSpec, validate
from lineguard.runtime.errors import BundleError


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Bundle:
    """A verified bundle on disk. ``manifest`` is the parsed manifest.json."""

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> Bundle:
        root = Path(path)
        if not root.is_dir():
            raise BundleError(f"{root}: no such bundle directory")
        mpath = root / MANIFEST
        if not mpath.is_file():
            raise BundleError(f"{mpath}: missing (not a lineguard bundle?)")
        try:
            manifest = json.loads(mpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BundleError(f"{mpath}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise BundleError(f"{mpath}: unreadable ({e})") from None
        try:
            validate(manifest)
        except BundleError as e:
            raise BundleError(f"{root}/{e}") from None
        bundle = cls(root, manifest)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every file against its recorded size and sha256; name the first that differs."""
        for rel, entry in self.manifest["files"].items():
            p = self.root / rel
            if not p.is_file():
                raise BundleError(f"{p}: missing (listed in manifest.json)")
            size = entry.get("bytes")
            if size is not None and p.stat().st_size != size:
                raise BundleError(
                    f"{p}: changed since it was written ({p.stat().st_size} bytes, manifest says {size})"
                )
            digest = sha256_file(p)
            if digest != entry["sha256"]:
                raise BundleError(
                    f"{p}: changed since it was written (sha256 {digest[:12]}…, manifest says {entry['sha256'][:12]}…)"
                )

    @property
    def product(self) -> str:
        return self.manifest["product"]

    def stage(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["stages"][name]
        except KeyError:
            have = ", ".join(self.manifest["stages"]) or "none"
            raise BundleError(f"{self.root}/manifest.json: no {name!r} stage (stages: {have})") from None

    def has_stage(self, name: str) -> bool:
        return name in self.manifest["stages"]

    def variant_path(self, stage: str, precision: str) -> Path:
        variants = self.stage(stage)["variants"]
        if precision not in variants:
            raise BundleError(
                f"{self.root}/manifest.json: stage {stage!r} has no {precision} variant (has: {', '.join(variants)})"
            )
        return self.root / variants[precision]["file"]

    def input_spec(self, stage: str) -> InputSpec:
        return InputSpec.from_dict(self.stage(stage)["input_spec"], f"stages.{stage}.input_spec")

    @property
    def thresholds(self) -> dict[str, Any]:
        return self.manifest["thresholds"]

    @property
    def normalization(self) -> dict[str, Any]:
        return self.manifest["normalization"]

    def content_hash(self) -> str:
        """The bundle's identity: a hash over every file's recorded sha256 (what a Triton repository
        built from it carries, so a station can tell it is talking to its own models)."""
        files = {k: v["sha256"] for k, v in sorted(self.manifest.get("files", {}).items())}
        return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def existing(path: str | os.PathLike) -> Bundle | None:
    """The bundle at ``path`` that an export adds a stage to; None where there is none yet.
    Something there that is not a usable bundle is refused rather than overwritten."""
    target = Path(path)
    if not target.exists():
        return None
    try:
        return Bundle.load(target)
    except BundleError as e:
        raise BundleError(f"--bundle {target}: exists but is not a usable bundle ({e})") from None


def new_manifest(product: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "product": product,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "lineguard_version": __version__,
        "stages": {},
        "thresholds": {},
        "normalization": {},
        "files": {},
    }


class BundleWriter:
    """Builds a bundle in a temp directory next to ``target`` and swaps it in on commit.

    ``base``: an existing bundle to extend (its files are hard-linked, not copied, where the
    filesystem allows). Use as a context manager; leaving it by an exception discards
    everything and leaves ``target`` as it was.
    """

    def __init__(self, target: str | os.PathLike, base: Bundle | None = None, product: str = "part") -> None:
        self.target = Path(target)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        if base is not None:
            self.manifest = copy.deepcopy(base.manifest)
            for rel in base.manifest["files"]:
                self.link_or_copy(base.root / rel, self.tmp / rel)
        else:
            self.manifest = new_manifest(product)
        self._committed = False

    @staticmethod
    def link_or_copy(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def path(self, rel: str) -> Path:
        """Where to write a new file ``rel`` (relative to the bundle root) before ``add_file``.

        A file of that name hard-linked from the base bundle is unlinked first: writing through
        the link would change the live bundle before the commit.
        """
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.unlink(missing_ok=True)
        return p

    def add_file(self, rel: str, role: str, provenance: dict[str, Any] | None = None) -> str:
        """Register a file already written at ``self.path(rel)``; hashes it. Returns ``rel``."""
        p = self.tmp / rel
        if not p.is_file():
            raise BundleError(f"{p}: was not written")
        self.manifest["files"][rel] = {
            "sha256": sha256_file(p),
            "bytes": p.stat().st_size,
            "role": role,
            **({"provenance": provenance} if provenance else {}),
        }
        return rel

    def remove_file(self, rel: str) -> None:
        self.manifest["files"].pop(rel, None)
        (self.tmp / rel).unlink(missing_ok=True)

    def commit(self) -> Path:
        validate(self.manifest)
        mpath = self.tmp / MANIFEST
        with open(mpath, "w", encoding="utf-8") as f:
            json.dump(self.manifest, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}-{time.monotonic_ns()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self._committed = True
        return self.target

    def discard(self) -> None:
        if not self._committed:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.discard()
        elif not self._committed:
            self.commit()
