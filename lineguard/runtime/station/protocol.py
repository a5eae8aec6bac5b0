"""Wire protocol v1: frames in, results out (see DESIGN.md).

Ingest ``[header JSON, payload]``; imagezmq's REQ format ``[{"msg", "dtype", "shape"}, buffer]`` or
``[{"msg"}, jpeg]``. Results ``[topic, JSON, optional PNG mask]``. Every check raises
``FrameError`` with a reason a line engineer can act on, and with the frame id when the header
could be read, so the server answers with an ``error`` message and goes on.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

VERSION = 1
ENCODINGS = ("raw", "jpeg", "png")
TOPICS = ("verdict", "explanation", "error")


class FrameError(ValueError):
    """A frame that cannot be inspected; ``frame_id``/``camera`` are set when the header was read."""

    def __init__(self, reason: str, code: str, frame_id: str | None = None, camera: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.code, self.frame_id, self.camera = reason, code, frame_id, camera


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 4096
    max_pixels: int = 40_000_000  # 40 MP: beyond any line camera; bounds the decoded size
    max_payload_bytes: int = 128 << 20


@dataclass
class Frame:
    frame_id: str
    camera: str
    image: np.ndarray  # HxWx3 (or HxW) uint8, BGR
    ts_sent: float | None
    ts: dict[str, float] = field(default_factory=dict)  # stage timestamps (time.time())
    seq: int = 0  # the station's own id, assigned at arrival (the sender's frame_id may repeat)


def _header(raw: bytes, limits: Limits) -> dict[str, Any]:
    if len(raw) > limits.max_header_bytes:
        raise FrameError(f"header is {len(raw)} bytes (limit {limits.max_header_bytes})", "header_too_large")
    try:
        h = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FrameError(f"header is not UTF-8 JSON ({e})", "bad_header") from None
    if not isinstance(h, dict):
        raise FrameError("header is not a JSON object", "bad_header")
    return h


def _decode_image(payload: memoryview | bytes, what: str, limits: Limits, fid: str, cam: str) -> np.ndarray:
    buf = np.frombuffer(payload, np.uint8)
    # Read the size from the header before decoding: a small file can claim a huge image.
    try:
        with Image.open(io.BytesIO(buf)) as probe:
            w, h = probe.size
    except Exception:  # PIL raises many types for a bad header; all mean "not an image"
        raise FrameError(f"{what} payload of {len(buf)} bytes is not a readable image", "corrupt_image", fid, cam) from None
    if w * h > limits.max_pixels:
        raise FrameError(f"{w}x{h} frame exceeds {limits.max_pixels} pixels", "too_large", fid, cam)
    if probe.format == "JPEG" and b"\xff\xd9" not in bytes(buf[-64:]):
        # OpenCV decodes a cut-off JPEG into a half-grey frame without complaint
        raise FrameError(f"JPEG payload of {len(buf)} bytes is truncated (no end marker)", "corrupt_image", fid, cam)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise FrameError(f"{what} payload of {len(buf)} bytes does not decode", "corrupt_image", fid, cam)
    return img


def _raw(payload: memoryview | bytes, shape: Any, dtype: Any, limits: Limits, fid: str, cam: str) -> np.ndarray:
    if dtype != "uint8":
        raise FrameError(f"dtype {dtype!r} is not supported (send uint8)", "bad_dtype", fid, cam)
    if (not isinstance(shape, list | tuple) or len(shape) not in (2, 3)
            or not all(isinstance(d, int) and d > 0 for d in shape) or (len(shape) == 3 and shape[2] not in (1, 3))):
        raise FrameError(f"shape {shape!r} is not [H, W] or [H, W, 1|3] of positive ints", "bad_shape", fid, cam)
    h, w = shape[0], shape[1]
    if h * w > limits.max_pixels:
        raise FrameError(f"{w}x{h} frame exceeds {limits.max_pixels} pixels", "too_large", fid, cam)
    need = int(np.prod(shape))
    if len(payload) != need:
        raise FrameError(f"payload is {len(payload)} bytes, shape {list(shape)} needs {need}", "size_mismatch", fid, cam)
    img = np.frombuffer(payload, np.uint8).reshape(shape)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    return img


def parse_frame(parts: list[Any], limits: Limits = Limits(), received: float | None = None) -> Frame:
    """``[header, payload]`` (lineguard v1) → Frame, or FrameError."""
    received = received if received is not None else time.time()
    if len(parts) != 2:
        raise FrameError(f"expected 2 message parts [header, payload], got {len(parts)}", "bad_parts")
    h = _header(bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]), limits)
    fid = h.get("frame_id")
    cam = str(h.get("camera", "unknown"))
    if not isinstance(fid, str | int) or fid == "":
        raise FrameError("header has no frame_id", "bad_header", None, cam)
    fid = str(fid)
    if h.get("v", VERSION) != VERSION:
        raise FrameError(f"protocol version {h.get('v')!r} is not supported (this runtime speaks {VERSION})",
                         "bad_version", fid, cam)
    payload = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
    if len(payload) > limits.max_payload_bytes:
        raise FrameError(f"payload is {len(payload)} bytes (limit {limits.max_payload_bytes})", "too_large", fid, cam)
    enc = h.get("encoding", "raw")
    if enc == "raw":
        img = _raw(payload, h.get("shape"), h.get("dtype", "uint8"), limits, fid, cam)
    elif enc in ("jpeg", "png"):
        img = _decode_image(payload, enc, limits, fid, cam)
    else:
        raise FrameError(f"encoding {enc!r} is unknown (use one of {', '.join(ENCODINGS)})", "bad_encoding", fid, cam)
    ts_sent = h.get("ts")
    return Frame(fid, cam, img, float(ts_sent) if isinstance(ts_sent, int | float) else None, {"received": received})


def parse_imagezmq(parts: list[Any], counter: int, limits: Limits = Limits(), received: float | None = None,
                   run: str = "") -> Frame:
    """An unmodified imagezmq sender's message: its ``msg`` is the camera name. imagezmq sends no frame
    id: it is ``<camera>-<run>-<counter>``, ``run`` being the station's, so a restart never reuses one."""
    received = received if received is not None else time.time()
    if len(parts) != 2:
        raise FrameError(f"expected imagezmq's 2 parts [metadata, buffer], got {len(parts)}", "bad_parts")
    md = _header(bytes(parts[0].buffer if hasattr(parts[0], "buffer") else parts[0]), limits)
    cam = str(md.get("msg", "imagezmq"))
    fid = f"{cam}-{run}-{counter}" if run else f"{cam}-{counter}"
    payload = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
    if "shape" in md:
        img = _raw(payload, list(md["shape"]) if isinstance(md["shape"], list) else md["shape"], md.get("dtype"),
                   limits, fid, cam)
    else:
        img = _decode_image(payload, "jpeg", limits, fid, cam)
    return Frame(fid, cam, img, None, {"received": received})


def encode_frame(frame_id: str, camera: str, image: np.ndarray | None = None, jpeg: bytes | None = None,
                 ts: float | None = None) -> list[bytes | memoryview]:
    """The sender's side: ``[header, payload]`` for a raw uint8 frame or JPEG bytes."""
    if jpeg is not None:
        header = {"v": VERSION, "frame_id": frame_id, "camera": camera, "ts": ts or time.time(), "encoding": "jpeg"}
        return [json.dumps(header).encode(), jpeg]
    assert image is not None and image.dtype == np.uint8
    image = np.ascontiguousarray(image)
    header = {"v": VERSION, "frame_id": frame_id, "camera": camera, "ts": ts or time.time(), "encoding": "raw",
              "dtype": "uint8", "shape": list(image.shape)}
    return [json.dumps(header).encode(), memoryview(image).cast("B")]


def result_message(topic: str, body: dict[str, Any], mask_png: bytes | None = None) -> list[bytes]:
    parts = [topic.encode(), json.dumps(body, default=_json_default).encode()]
    if mask_png is not None:
        parts.append(mask_png)
    return parts


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")
