"""CURVE key files (``frametok keys``) and a subscriber socket's CURVE set-up.

Keys are pyzmq's certificate files: ``NAME.key`` public, ``NAME.key_secret`` secret. The publisher's
side (the authenticator, server sockets) is ``frametok.streamer.delivery.security``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from .errors import ConfigError

__all__ = ["client_curve", "load_key", "make_keypair"]


def make_keypair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, give it out) and ``NAME.key_secret`` (keep it) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_key(path: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    """The (public, secret) keys of a key file; ConfigError naming the file when it cannot be used."""
    path = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key file {path}: {exc}") from exc
    if need_secret and secret is None:
        raise ConfigError(f"{path} holds no secret key (give the .key_secret file)")
    return public, secret


def client_curve(sock: zmq.Socket[Any], secret_key_file: str | Path, server_key_file: str | Path) -> None:
    """Make ``sock`` a CURVE client of the server whose public key is in ``server_key_file``."""
    public, secret = load_key(secret_key_file, need_secret=True)
    server_public, _ = load_key(server_key_file, need_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
