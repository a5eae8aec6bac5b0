"""ZeroMQ CURVE for remote cameras: key pairs, the server's authenticator, the client's keys.

`lineguard keys DIR` writes ``server.key``/``server.key_secret`` and one client pair,
``client.key``/``client.key_secret``, with the client's public key also in ``clients/`` (the
folder the server trusts). Copy ``client.key_secret`` and ``server.key`` to a camera; add more
cameras by putting their public keys in ``clients/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import zmq

from lineguard.runtime.errors import LineguardError


def make_keys(folder: str | Path) -> Path:
    from zmq.auth import create_certificates

    d = Path(folder)
    if (d / "server.key_secret").exists():
        raise LineguardError(f"{d}: already holds keys (server.key_secret); use a new folder")
    (d / "clients").mkdir(parents=True, exist_ok=True)
    create_certificates(str(d), "server")
    pub, _ = create_certificates(str(d), "client")
    shutil.copy(pub, d / "clients" / "client.key")
    return d


def curve_server(ctx: zmq.Context, keys: str | Path) -> tuple[Any, bytes, bytes]:
    """Start ZeroMQ's authenticator: only clients whose public keys are in ``keys/clients`` get in."""
    from zmq.auth import load_certificate
    from zmq.auth.thread import ThreadAuthenticator

    keys = Path(keys)
    secret = keys / "server.key_secret"
    clients = keys / "clients"
    if not secret.is_file() or not clients.is_dir():
        raise LineguardError(f"--curve-keys {keys}: expected server.key_secret and clients/ (make them with "
                             "lineguard keys DIR)")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(clients))
    public, private = load_certificate(str(secret))
    return auth, public, private


def curve_client(sock: zmq.Socket, keys: str | Path) -> None:
    """Use ``keys/client.key_secret`` and the server's ``keys/server.key`` (from ``lineguard keys``)."""
    from zmq.auth import load_certificate

    keys = Path(keys)
    try:
        pub, sec = load_certificate(str(keys / "client.key_secret"))
        server_pub, _ = load_certificate(str(keys / "server.key"))
    except (OSError, ValueError) as e:
        raise LineguardError(f"--curve-keys {keys}: {e}") from None
    sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = pub, sec, server_pub


