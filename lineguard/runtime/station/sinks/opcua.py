"""OPC UA: the station as a server PLCs and SCADA read (asyncua, on an event loop of its own).

Under ``Objects/Line`` each camera is an object, made when its first result comes, with
``FrameId``, ``Seq``, ``Verdict`` (``OK``/``NG``; a fail-safe decision at the deadline is ``NG`` or
``OK`` as the station was told), ``Score``, ``DefectType`` (when its masks are classified),
``Frames``, ``Defects``, ``DeadlineMissed``, and the acknowledge handshake: the PLC writes the
``Seq`` it has acted on into ``AckSeq`` (acknowledging it and every verdict published before it);
``Unacknowledged`` counts the verdicts published after it.
The values are the gate's decisions: a late real verdict after a fail-safe does not overwrite them.

Anonymous clients only on a loopback endpoint; any other address needs ``users`` (user:password
lines) and refuses anonymous sessions. ``cert``/``key`` add Basic256Sha256 Sign and SignAndEncrypt.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lineguard.runtime.errors import LineguardError
from lineguard.runtime.ports import is_loopback
from lineguard.runtime.station.sinks.base import Sink, log
from lineguard.runtime.station.sinks.mqtt import camera_topic

NAMESPACE = "urn:lineguard:station"
VARIABLES = (("FrameId", "String", ""), ("Seq", "Int64", 0), ("Verdict", "String", ""), ("Score", "Double", 0.0),
             ("DefectType", "String", ""), ("Frames", "Int64", 0), ("Defects", "Int64", 0),
             ("DeadlineMissed", "Int64", 0), ("AckSeq", "Int64", 0), ("Unacknowledged", "Int64", 0))
GATE = {"good": "OK", "defect": "NG"}


def read_users(path: str) -> dict[str, str]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise LineguardError(f"--opcua-users {path}: {e.strerror}") from None
    users = dict(x.strip().split(":", 1) for x in lines if ":" in x and not x.lstrip().startswith("#"))
    if not users:
        raise LineguardError(f"--opcua-users {path}: no user:password line")
    return users


class OpcUaSink(Sink):
    kind = "opcua"

    def __init__(self, url: str, users: str | None = None, cert: str | None = None, key: str | None = None,
                 queue_size: int = 1000) -> None:
        u = urlparse(url)
        if u.scheme != "opc.tcp" or not u.hostname:
            raise LineguardError(f"--opcua {url}: expected opc.tcp://host:port[/path]")
        if not is_loopback(u.hostname) and not users:
            raise LineguardError(f"--opcua {url} is reachable from other machines: give --opcua-users "
                                 "(anonymous clients are allowed on loopback only)")
        if bool(cert) != bool(key):
            raise LineguardError("--opcua-cert and --opcua-key go together")
        super().__init__(url, queue_size)
        self.url, self.users = url, read_users(users) if users else None
        self.cert, self.key = cert, key
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self.loop.run_forever, name="opcua", daemon=True)
        self.cams: dict[str, dict[str, Any]] = {}  # camera → {variable name: node}
        self.counts_by_cam: dict[str, dict[str, int]] = {}
        self.decided: dict[str, deque] = {}  # camera → seqs published to the gate, in publish order
        self.acked: dict[str, int] = {}  # camera → the AckSeq last seen

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        from asyncua import Server, ua
        from asyncua.crypto.permission_rules import User, UserRole
        from asyncua.server.user_managers import UserManager

        users = self.users

        class Users(UserManager):
            def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                         certificate: Any = None) -> User | None:
                if users is None:
                    return User(role=UserRole.User)
                return User(role=UserRole.User, name=username) if username and users.get(username) == password \
                    else None

        self.server = Server(user_manager=Users())
        await self.server.init()
        self.server.set_endpoint(self.url)
        self.server.set_server_name("lineguard station")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.cert:
            await self.server.load_certificate(self.cert)
            await self.server.load_private_key(self.key)
            policies += [ua.SecurityPolicyType.Basic256Sha256_Sign, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        self.server.set_security_policy(policies)
        self.server.set_security_IDs(["Username"] if users else ["Anonymous", "Username"])
        self.idx = await self.server.register_namespace(NAMESPACE)
        self.line = await self.server.nodes.objects.add_object(self.idx, "Line")
        self.ua = ua
        await self.server.start()

    def start(self) -> None:
        self.loop_thread.start()
        try:
            self._call(self._start(), 30)
        except OSError as e:
            raise LineguardError(f"--opcua {self.url}: cannot serve ({e})") from None
        log.info("OPC UA server at %s (%s)", self.url, "users" if self.users else "anonymous, loopback")
        super().start()

    async def _camera(self, cam: str) -> dict[str, Any]:
        if cam not in self.cams:
            obj = await self.line.add_object(self.idx, cam)
            nodes = {}
            for name, kind, init in VARIABLES:
                nodes[name] = await obj.add_variable(self.idx, name, self.ua.Variant(init, getattr(
                    self.ua.VariantType, kind)))
            await nodes["AckSeq"].set_writable()
            self.cams[cam] = nodes
        return self.cams[cam]

    async def _write(self, node: Any, value: Any, kind: str) -> None:
        # the server's own write: no service call, no session (node.write_value costs ~3x as much)
        await self.server.write_attribute_value(node.nodeid, self.ua.DataValue(
            self.ua.Variant(value, getattr(self.ua.VariantType, kind))))

    async def _update(self, topic: str, body: dict[str, Any]) -> None:
        cam = camera_topic(body.get("camera"))
        nodes = await self._camera(cam)
        n = self.counts_by_cam.setdefault(cam, {"Frames": 0, "Defects": 0, "DeadlineMissed": 0, "seq": -1})
        decided = self.decided.setdefault(cam, deque(maxlen=100_000))
        if topic != "verdict" or body.get("verdict") not in GATE:
            return
        if body.get("update") == "masks" and body.get("seq") == n["seq"]:
            defects = body.get("defects") or []
            await self._write(nodes["DefectType"], str(defects[0].get("class") or "") if defects else "", "String")
            return
        if body.get("update"):  # a late real verdict after the fail-safe: the gate's decision stands
            return
        n["seq"] = body.get("seq")
        n["Frames"] += 1
        n["Defects"] += body["verdict"] == "defect"
        n["DeadlineMissed"] += bool(body.get("reason") == "deadline" or body.get("deadline_missed"))
        decided.append(int(body.get("seq") or 0))
        for name, value, kind in (("FrameId", str(body.get("frame_id") or ""), "String"),
                                  ("Seq", int(body.get("seq") or 0), "Int64"),
                                  ("Verdict", GATE[body["verdict"]], "String"),
                                  ("Score", float(body.get("score") or 0.0), "Double"),
                                  ("DefectType", "", "String"),
                                  ("Frames", n["Frames"], "Int64"), ("Defects", n["Defects"], "Int64"),
                                  ("DeadlineMissed", n["DeadlineMissed"], "Int64")):
            await self._write(nodes[name], value, kind)
        await self._handshake(cam)

    async def _handshake(self, cam: str) -> None:
        """The PLC acknowledged ``AckSeq``: that verdict and every one published before it (verdicts
        leave in publish order, which is not always seq order: several expert workers)."""
        nodes, decided = self.cams[cam], self.decided[cam]
        ack = int(await nodes["AckSeq"].read_value())
        if ack != self.acked.get(cam) and ack in decided:
            while decided and decided.popleft() != ack:
                pass
        self.acked[cam] = ack
        await self._write(nodes["Unacknowledged"], len(decided), "Int64")

    async def _handshakes(self) -> None:
        for cam in list(self.cams):
            await self._handshake(cam)

    def send(self, topic: str, body: dict[str, Any], png: bytes | None) -> None:
        self._call(self._update(topic, body))
        self.count("sent")

    def idle(self) -> None:
        if self.cams:  # a PLC's acknowledgement shows without waiting for the next verdict
            self._call(self._handshakes())

    def close(self, timeout: float = 5.0) -> None:
        super().close(timeout)
        try:
            self._call(self.server.stop(), timeout)
        except Exception:  # stopping a server that failed: nothing left to release
            log.debug("OPC UA server stop", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(timeout)

    def state(self) -> dict[str, Any]:
        unacked = sum(len(d) for d in self.decided.values())
        return super().state() | {"cameras": len(self.cams), "unacknowledged": unacked}
