"""Early checks of the endpoints a run will listen on: one clear message per endpoint already in use,
before any process starts (a worker that found its endpoint taken would fail only after loading models)."""

from __future__ import annotations

import contextlib
import errno
import socket
from collections.abc import Iterable

from ...errors import ConfigError

__all__ = ["check_endpoints_free", "endpoint_in_use"]


def _tcp_in_use(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (None: it can)."""
    if host in ("*", ""):
        host = "0.0.0.0"
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror:
        return None  # an interface name or the like: ZeroMQ resolves it itself
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ZeroMQ does: TIME_WAIT is no conflict
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "address already in use (another frametok run or another program listens there)"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"{host} is not an address of this machine"
            return exc.strerror or str(exc)
    return None


def _ipc_in_use(path: str) -> str | None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None  # nothing there, or a stale socket file that ZeroMQ replaces
        except OSError:
            return None
        return "a process is already listening on this ipc path"


def endpoint_in_use(endpoint: str) -> str | None:
    """Why a ZeroMQ ``endpoint`` (tcp://HOST:PORT, ipc://PATH) cannot be bound now; None when it can."""
    scheme, _, rest = endpoint.partition("://")
    if scheme == "tcp":
        host, _, port_text = rest.rpartition(":")
        if not port_text.isdigit():
            return None  # "*" or "!": an ephemeral port is always free
        return _tcp_in_use(host, int(port_text))
    if scheme == "ipc":
        return _ipc_in_use(rest)
    return None


def check_endpoints_free(endpoints: Iterable[tuple[str, str | None]]) -> None:
    """Raise :class:`ConfigError` naming every (config field, endpoint) that is already in use."""
    problems = []
    seen: dict[str, str] = {}
    for what, endpoint in endpoints:
        if not endpoint:
            continue
        if endpoint in seen:
            problems.append(f"{what}: {endpoint} is also {seen[endpoint]}")
            continue
        seen[endpoint] = what
        with contextlib.suppress(ValueError):
            why = endpoint_in_use(endpoint)
            if why:
                problems.append(f"{what}: cannot listen on {endpoint}: {why}")
    if problems:
        raise ConfigError("\n".join(problems))
