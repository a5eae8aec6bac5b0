"""`lineguard camera`: frames from a video file, stream URL, USB device or image folder, sent to a runtime.

Open loop at the source's rate (or ``--fps``): a frame is sent on its schedule whether or not the
runtime keeps up. A send that the runtime cannot take within the timeout is counted as failed,
not retried (a stale frame is worth less than the next one). Sources that fail are reopened.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zmq

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.station.curve import curve_client
from lineguard.runtime.station.protocol import encode_frame

log = logging.getLogger("lineguard.camera")


def frames(source: str, loop: bool = False, reopen_s: float = 1.0) -> Iterator[tuple[np.ndarray, float | None]]:
    """(frame, the source's own fps or None) forever (``loop``) or until the source ends."""
    p = Path(source)
    if p.is_dir():
        files = list_images(p, recursive=True)
        if not files:
            raise LineguardError(f"--source {p}: no image files in this folder")
        while True:
            for f in files:
                try:
                    yield read_image(f), None
                except LineguardError as e:
                    log.warning("%s", e)
            if not loop:
                return
    target: Any = int(source) if source.isdigit() else source
    is_file = p.is_file()
    if not is_file and not isinstance(target, int) and "://" not in source:
        raise LineguardError(f"--source {source}: no such file, folder, device number or URL")
    while True:
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            if is_file:
                raise LineguardError(f"--source {source}: OpenCV cannot open it")
            log.warning("cannot open %s; retrying in %.0f s", source, reopen_s)
            time.sleep(reopen_s)
            continue
        fps = cap.get(cv2.CAP_PROP_FPS) or None
        while True:
            ok, img = cap.read()
            if not ok:
                break
            yield img, fps
        cap.release()
        if is_file and not loop:
            return
        if not is_file:
            log.warning("%s went away; reopening", source)
            time.sleep(reopen_s)


def run_camera(source: str, connect: str, fps: float | None = None, jpeg: int | None = None, name: str = "cam0",
               max_frames: int | None = None, loop: bool = False, timeout_ms: int = 1000,
               curve_keys: str | None = None, hwm: int = 16, run: str | None = None) -> dict[str, Any]:
    """Send ``source``'s frames as ``<name>-<run>-<n>``: ``run`` (default: new for each call) keeps two
    runs of the same camera from sending the same ids."""
    run = run or secrets.token_hex(3)
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUSH)
    sock.sndtimeo, sock.sndhwm, sock.linger = timeout_ms, hwm, 2000
    if curve_keys:
        curve_client(sock, curve_keys)
    sock.connect(connect)
    sent = failed = 0
    t_start = time.perf_counter()
    next_t = t_start
    try:
        for i, (img, src_fps) in enumerate(frames(source, loop)):
            if max_frames is not None and i >= max_frames:
                break
            rate = fps or src_fps
            if rate:
                next_t += 1.0 / rate
                delay = next_t - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            fid = f"{name}-{run}-{i}"
            if jpeg is not None:
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg)])
                parts = encode_frame(fid, name, jpeg=buf.tobytes())
            else:
                parts = encode_frame(fid, name, image=img)
            try:
                sock.send_multipart(parts, copy=False)
                sent += 1
            except zmq.Again:  # the runtime is gone or full: count it, go on with the next frame
                failed += 1
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    elapsed = time.perf_counter() - t_start
    return {"camera": name, "run": run, "sent": sent, "failed": failed, "seconds": round(elapsed, 2),
            "rate": round(sent / elapsed, 1) if elapsed else None}
