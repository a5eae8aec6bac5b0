"""`serve --opcua`: a real asyncua client reads the station's variables, as a PLC or SCADA would."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Station

from lineguard.runtime.imageio import list_images, read_image
from lineguard.runtime.ports import free_ports
from lineguard.runtime.station.protocol import encode_frame

asyncua = pytest.importorskip("asyncua", reason="serve --opcua needs asyncua (a base dependency)")


async def camera_node(client, cam: str):
    ns = await client.get_namespace_index("urn:lineguard:station")
    return await client.nodes.objects.get_child([f"{ns}:Line", f"{ns}:{cam}"]), ns


async def read(client, cam: str, *names: str) -> dict:
    node, ns = await camera_node(client, cam)
    return {n: await (await node.get_child(f"{ns}:{n}")).read_value() for n in names}


def test_a_plc_reads_every_verdict_and_acknowledges(served_bundle: Path, synth: Path, tmp_path: Path) -> None:
    port = free_ports(1)[0]
    url = f"opc.tcp://127.0.0.1:{port}/lineguard/"
    st = Station(served_bundle, tmp_path, "--opcua", url)
    imgs = [read_image(p) for p in list_images(synth / "test", recursive=True)]
    try:
        st.send(encode_frame("first", "camA", image=imgs[0]))
        st.collect(lambda g: any(t == "verdict" for t, _, _ in g))

        async def run() -> tuple[list, list, dict, dict]:
            seen: list = []

            class Handler:
                def datachange_notification(self, node, val, data) -> None:
                    seen.append(val)

            async with asyncua.Client(url) as client:
                node, ns = await camera_node(client, "camA")
                frame_id = await node.get_child(f"{ns}:FrameId")
                sub = await client.create_subscription(20, Handler())
                await sub.subscribe_data_change(frame_id, queuesize=1000, sampling_interval=0)
                await asyncio.sleep(0.5)
                for i, img in enumerate(imgs):
                    st.send(encode_frame(f"p{i}", "camA", image=img))
                msgs = await asyncio.to_thread(
                    st.collect, lambda g: sum(t == "verdict" and "update" not in b for t, b, _ in g) == len(imgs))
                order = [b["frame_id"] for t, b, _ in msgs if t == "verdict" and "update" not in b]
                for _ in range(100):  # every change notified (the last publishing interval)
                    if seen[-1:] == order[-1:]:
                        break
                    await asyncio.sleep(0.1)
                before = await read(client, "camA", "Frames", "Defects", "Seq", "Unacknowledged", "Verdict")
                ack = await node.get_child(f"{ns}:AckSeq")
                await ack.write_value(asyncua.ua.Variant(before["Seq"], asyncua.ua.VariantType.Int64))
                for _ in range(50):
                    after = await read(client, "camA", "Unacknowledged", "AckSeq")
                    if after["Unacknowledged"] == 0:
                        break
                    await asyncio.sleep(0.1)
                return seen, order, before, after | {"msgs": msgs}

        seen, order, before, after = asyncio.run(run())
    finally:
        code, summary = st.stop()
    assert code == 0
    assert [s for s in seen if s != "first"] == order  # every verdict, in the order published
    assert before["Frames"] == len(imgs) + 1 and before["Defects"] == summary["verdicts"].get("defect", 0)
    assert before["Unacknowledged"] == len(imgs) + 1  # nothing acknowledged yet
    assert after["Unacknowledged"] == 0 and after["AckSeq"] == before["Seq"]
    assert before["Verdict"] in ("OK", "NG")


def test_off_loopback_opcua_needs_users(served_bundle: Path, synth: Path, tmp_path: Path) -> None:
    port, ing, pub = free_ports(3)
    common = [sys.executable, "-m", "lineguard", "serve", str(served_bundle), "--ingest", f"tcp://127.0.0.1:{ing}",
              "--publish", f"tcp://127.0.0.1:{pub}", "--opcua", f"opc.tcp://0.0.0.0:{port}/lineguard/"]
    r = subprocess.run(common, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--opcua-users" in r.stderr.strip().splitlines()[-1]
    users = tmp_path / "users"
    users.write_text("plc:s3cret\n")
    proc = subprocess.Popen([*common, "--opcua-users", str(users)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        ready = json.loads(proc.stdout.readline())
        assert ready["event"] == "ready"
        url = f"opc.tcp://127.0.0.1:{port}/lineguard/"

        async def anonymous() -> None:
            async with asyncua.Client(url) as client:
                await client.nodes.objects.get_children()

        with pytest.raises(Exception):  # noqa: B017 (asyncua raises its own status errors)
            asyncio.run(anonymous())

        async def logged_in() -> list:
            client = asyncua.Client(url)
            client.set_user("plc")
            client.set_password("s3cret")
            async with client:
                return await client.nodes.objects.get_children()

        assert asyncio.run(logged_in())
        wrong = asyncua.Client(url)
        wrong.set_user("plc")
        wrong.set_password("guess")

        async def wrong_password() -> None:
            async with wrong:
                pass

        with pytest.raises(Exception):  # noqa: B017
            asyncio.run(wrong_password())
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0
