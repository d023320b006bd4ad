"""ZeroMQ CURVE: key pairs, the publisher's authenticator, and socket set-up on both sides.

A publisher with CURVE configured accepts only subscribers whose public key is in its
``authorized_keys`` folder; everything on the wire is encrypted. Keys are the files written by
``frametok keys`` (pyzmq's certificate format: ``NAME.key`` public, ``NAME.key_secret`` secret).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from ..errors import ConfigError

__all__ = ["client_curve", "make_keypair", "server_curve", "start_authenticator"]


def make_keypair(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public, give it out) and ``NAME.key_secret`` (keep it) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(folder), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load(path: str | Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    path = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read CURVE key file {path}: {exc}") from exc
    if need_secret and secret is None:
        raise ConfigError(f"{path} holds no secret key (give the .key_secret file)")
    return public, secret


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
    public, secret = _load(secret_key_file, need_secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def client_curve(sock: zmq.Socket[Any], secret_key_file: str | Path, server_key_file: str | Path) -> None:
    public, secret = _load(secret_key_file, need_secret=True)
    server_public, _ = _load(server_key_file, need_secret=False)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public
