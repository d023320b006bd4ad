"""The publisher's side of ZeroMQ CURVE: the authenticator and server sockets.

A publisher with CURVE configured accepts only subscribers whose public key is in its
``authorized_keys`` folder; everything on the wire is encrypted. Key files: ``frametok.keys``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq

from ...errors import ConfigError
from ...keys import load_key

__all__ = ["server_curve", "start_authenticator"]


def start_authenticator(ctx: zmq.Context[Any], authorized_keys: str | Path) -> Any:
    """Start the ZAP handler (a thread of this process) that admits only the authorized public keys."""
    from zmq.auth.thread import ThreadAuthenticator

    folder = Path(authorized_keys)
    if not folder.is_dir():
        raise ConfigError(f"CURVE authorized_keys {folder} is not a folder of public key files")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(folder))
    return auth


def server_curve(sock: zmq.Socket[Any], secret_key_file: str | Path) -> None:
    public, secret = load_key(secret_key_file, need_secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
