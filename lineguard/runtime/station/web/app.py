"""The web view's routes: pages, the JSON API behind them, the live stream, `/metrics`, `/healthz`.

Read-only: nothing here changes the station. Every failure of a request is its own (logged,
counted as ``web_errors``, answered 500); bad parameters get a 400 naming the parameter.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from lineguard.runtime.station.health import registry, station_health
from lineguard.runtime.station.web.feed import LiveFeed
from lineguard.runtime.station.web.history import Filters, History, QueryError

log = logging.getLogger("lineguard.web")
STATIC = Path(__file__).with_name("static")
TICK_S = 0.25  # the live page's update rate cap: 4 per second, however fast the line
PAGES = {"/": "live.html", "/history": "history.html", "/bundle": "bundle.html"}
COOKIE = "lineguard_token"


class Unavailable(Exception):
    """What a request asks for is not kept by this station (answered 404 with the reason)."""


@dataclass
class View:
    """What the routes read: the station's pipeline, its publish queue, its store and artefacts."""
    pipeline: Any
    out_queue: Any
    feed: LiveFeed
    history: History | None = None
    token: str | None = None
    clients: set[asyncio.Queue] = field(default_factory=set)
    stopping: bool = False


def create_app(view: View) -> Starlette:
    p = view.pipeline
    prom = registry(p)

    def fail(status: int, reason: str) -> JSONResponse:
        return JSONResponse({"error": reason}, status)

    def need_history() -> History:
        if view.history is None:
            raise Unavailable("this station keeps no results: start serve with --db FILE")
        return view.history

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / PAGES.get(request.url.path, "frame.html"), media_type="text/html")

    def metrics(_: Request) -> Response:
        from prometheus_client import generate_latest

        return Response(generate_latest(prom), media_type="text/plain; version=0.0.4")

    def healthz(_: Request) -> Response:
        return JSONResponse(station_health(p, view.out_queue))

    def live(_: Request) -> Response:
        return JSONResponse(snapshot(view))

    async def stream(request: Request) -> Response:
        q: asyncio.Queue = asyncio.Queue(maxsize=2)
        view.clients.add(q)

        async def events() -> AsyncIterator[str]:
            try:
                yield "retry: 1000\n\n"
                yield f"data: {json.dumps(snapshot(view))}\n\n"
                while not view.stopping:
                    try:
                        data = await asyncio.wait_for(q.get(), 5.0)
                    except TimeoutError:
                        yield ": still here\n\n"  # a proxy or browser would close a silent stream
                        continue
                    yield f"data: {data}\n\n"
            finally:
                view.clients.discard(q)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def camera_image(request: Request) -> Response:
        cam, which = request.path_params["camera"], request.path_params["which"]
        if which not in ("latest", "defect"):
            return fail(404, f"{which}: latest or defect")
        shown = view.feed.shown(cam, which)
        seq = request.query_params.get("seq")
        if shown is None or (seq is not None and str(shown.seq) != seq):
            return fail(404, f"camera {cam!r} has no {which} frame{' ' + seq if seq else ''} now")
        kind = request.path_params["kind"].split(".")[0]
        if kind not in ("frame", "mask"):
            return fail(404, f"{kind}: frame.jpg or mask.png")
        if kind == "mask":
            data, media = shown.mask_png, "image/png"
        else:
            data, media = shown.encoded(), "image/jpeg"
        if data is None:
            return fail(404, f"camera {cam!r}: the {which} frame's {kind} is not kept")
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=3600"})

    def cameras(_: Request) -> Response:
        names = set(view.feed.cameras) | set(view.history.cameras() if view.history else [])
        return JSONResponse({"cameras": sorted(names)})

    def results(request: Request) -> Response:
        return JSONResponse(need_history().results(Filters.parse(dict(request.query_params))))

    def results_csv(request: Request) -> Response:
        f = Filters.parse(dict(request.query_params))
        return PlainTextResponse(need_history().csv(f), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="lineguard-results.csv"'})

    def frame(request: Request) -> Response:
        fid = request.path_params["frame_id"]
        rec = need_history().frame(fid, _seq(request))
        if rec is None:
            return fail(404, f"no frame {fid!r} in the store")
        art = p.outbox.artifacts
        rec["images"] = {k: f"/api/frames/{fid}/{k}?seq={rec['seq']}" for k in ("frame", "mask", "overlay")
                         if art is not None and art.find(rec["seq"], k) is not None}
        return JSONResponse(rec)

    def frame_file(request: Request) -> Response:
        fid, kind = request.path_params["frame_id"], request.path_params["kind"]
        if kind not in ("frame", "mask", "overlay"):
            return fail(404, f"{kind}: frame, mask or overlay")
        rec = need_history().frame(fid, _seq(request))
        path = p.outbox.artifacts.find(rec["seq"], kind) if rec and p.outbox.artifacts else None
        if path is None:
            return fail(404, f"frame {fid!r}: no {kind} kept (artefacts are kept for flagged frames, --artifacts)")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    def bundle(_: Request) -> Response:
        b = p.bundle
        serving = json.loads(json.dumps({k: v for k, v in vars(p.cfg).items() if k != "limits"}, default=str))
        return JSONResponse({"root": str(b.root), "manifest": b.manifest, "health": dict(p.health),
                             "serving": serving})

    async def on_query_error(_: Request, e: Exception) -> Response:
        return fail(400, str(e))

    async def on_missing(_: Request, e: Exception) -> Response:
        return fail(404, str(e))

    async def on_error(request: Request, e: Exception) -> Response:
        p.stats.inc("web_errors")
        log.exception("web view: %s failed", request.url.path)
        return fail(500, f"the web view failed on this request ({type(e).__name__}); the station goes on")

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker(view))
        yield
        view.stopping = True
        task.cancel()

    routes = [Route(path, page) for path in PAGES] + [
        Route("/frames/{frame_id:path}", page),
        Route("/metrics", metrics), Route("/healthz", healthz),
        Route("/favicon.ico", lambda _: Response(status_code=204)),
        Route("/api/live", live), Route("/api/stream", stream),
        Route("/api/cameras", cameras), Route("/api/cameras/{camera}/{which}/{kind:str}", camera_image),
        Route("/api/results", results), Route("/api/results.csv", results_csv),
        Route("/api/frames/{frame_id}/{kind}", frame_file), Route("/api/frames/{frame_id}", frame),
        Route("/api/bundle", bundle),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={QueryError: on_query_error, Unavailable: on_missing, Exception: on_error})
    return Token(app, view.token) if view.token else app


def _seq(request: Request) -> int | None:
    v = request.query_params.get("seq")
    if v is None:
        return None
    if not v.isdigit():
        raise QueryError(f"seq={v!r}: not a whole number")
    return int(v)


def snapshot(view: View) -> dict[str, Any]:
    p = view.pipeline
    return view.feed.snapshot() | {"station": station_health(p, view.out_queue)}


async def ticker(view: View) -> None:
    """Fold the station's notes into the live state and send it to every open page, at ``TICK_S``.
    A page that has not taken the last update gets the newest instead (never a growing backlog)."""
    while True:
        await asyncio.sleep(TICK_S)
        try:
            view.feed.tick()
            if not view.clients:
                continue
            data = json.dumps(snapshot(view))
        except Exception:  # the live view fails, the station does not
            view.pipeline.stats.inc("web_errors")
            log.exception("web view: the live update failed")
            continue
        for q in list(view.clients):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(data)


class Token:
    """Every request must carry the station's token: ``Authorization: Bearer T``, the cookie a page
    got, or ``?token=T`` (which sets that cookie, so links and the live stream work in a browser)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        req = Request(scope)
        given = req.headers.get("authorization", "").removeprefix("Bearer ").strip() \
            or req.query_params.get("token") or req.cookies.get(COOKIE) or ""
        if not hmac.compare_digest(given.encode(), self.token):
            await JSONResponse({"error": "this station needs its token (Authorization: Bearer …, or ?token=)"},
                               401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        if req.query_params.get("token"):
            async def with_cookie(msg: dict) -> None:
                if msg["type"] == "http.response.start":
                    msg.setdefault("headers", []).append(
                        (b"set-cookie", f"{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict".encode()))
                await send(msg)
            await self.app(scope, receive, with_cookie)
            return
        await self.app(scope, receive, send)
