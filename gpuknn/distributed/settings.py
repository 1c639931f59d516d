"""A multi-host job's cluster settings, read from the environment: the Ray head's port
(``$GPUKNN_RAY_PORT``), how long hosts wait for each other (``$GPUKNN_HOST_TIMEOUT_S``)
and addresses for host names the network does not resolve (``$GPUKNN_HOST_ADDRESSES``);
see :mod:`gpuknn.distributed.hosts`."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from gpuknn.errors import ClientError, ClusterError

PORT_VARIABLE = "GPUKNN_RAY_PORT"
TIMEOUT_VARIABLE = "GPUKNN_HOST_TIMEOUT_S"
ADDRESSES_VARIABLE = "GPUKNN_HOST_ADDRESSES"


@dataclass(frozen=True)
class ClusterSettings:
    """Port, timeout and host addresses of a multi-host job (see the module)."""

    port: int = 6379
    timeout_s: float = 300.0
    addresses: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> ClusterSettings:
        """Read the settings; a malformed value is a ClientError naming the variable."""
        environ = os.environ if environ is None else environ
        port = _number(environ, PORT_VARIABLE, 6379, int, "an integer in 1..65535")
        if not 1 <= port <= 65535:
            raise ClientError(f"${PORT_VARIABLE}={port}: must be an integer in 1..65535")
        timeout = _number(environ, TIMEOUT_VARIABLE, 300.0, float, "a number of seconds > 0")
        if not timeout > 0:
            raise ClientError(f"${TIMEOUT_VARIABLE}={timeout}: must be a number of seconds > 0")
        return cls(port, timeout, _addresses(environ.get(ADDRESSES_VARIABLE, "")))

    def address_of(self, host: str) -> str:
        """The host's IP address: from ``$GPUKNN_HOST_ADDRESSES``, else DNS (retried
        until the timeout: container networks may name a host a little late)."""
        mapped = dict(self.addresses)
        if host in mapped:
            return mapped[host]
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return socket.gethostbyname(host)
            except OSError as err:
                if time.monotonic() > deadline:
                    raise ClusterError(f"cannot resolve host {host!r} ({err}) after "
                                       f"{self.timeout_s:g} s; map it in "
                                       f"${ADDRESSES_VARIABLE}") from None
                time.sleep(1.0)


def _number(environ: dict[str, str], name: str, default: Any, kind: type, allowed: str) -> Any:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        raise ClientError(f"${name}={text!r}: must be {allowed}") from None


def _addresses(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, address = item.partition("=")
        if not sep or not host.strip() or not address.strip():
            raise ClientError(f"${ADDRESSES_VARIABLE}: {item!r} is not host=address "
                              "(e.g. algo-1=10.0.0.5,algo-2=10.0.0.6)")
        pairs.append((host.strip(), address.strip()))
    return tuple(pairs)
