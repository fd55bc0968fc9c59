"""Bearer tokens, checked as the OpenTelemetry Collector's ``bearertokenauth`` extension checks
them: ``Authorization: Bearer <token>`` (an HTTP header, or gRPC metadata ``authorization``).

Every configured token is compared, in constant time, whatever the outcome, so the time an answer
takes tells nothing about how much of a token was right. Tokens are never logged. A
``bearer_tokens_file`` holds one token a line (blank lines ignored) and is looked at at most once a
second: a rotated file is used without a restart; one that cannot be read keeps the tokens in use.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time

from tailsampler.collector.config import BearerAuthConfig, TlsServerConfig
from tailsampler.collector.receive.tls import ServerTls
from tailsampler.common.endpoints import Endpoint

log = logging.getLogger(__name__)

_RECHECK = 1.0  # seconds between looks at bearer_tokens_file


class BearerTokens:
    def __init__(self, config: BearerAuthConfig, where: str) -> None:
        self._file = config.bearer_tokens_file
        self._where = where  # the config key, for messages
        self._tokens = [token.encode() for token in config.bearer_tokens]
        self._signature: tuple[int, int, int] | None = None
        self._next_check = 0.0
        self._trouble = ""  # the last problem with the file, logged once until it changes
        if self._file is not None:
            self._reload_file(initial=True)

    def allows(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` value carries one of the tokens."""
        if self._file is not None and time.monotonic() >= self._next_check:
            self._reload_file(initial=False)
        if not authorization:
            return False
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        candidate = presented.strip().encode()
        allowed = False
        for token in self._tokens:
            allowed |= hmac.compare_digest(candidate, token)
        return allowed

    def _reload_file(self, initial: bool) -> None:
        assert self._file is not None
        self._next_check = time.monotonic() + _RECHECK
        try:
            info = os.stat(self._file)
            signature = (info.st_ino, info.st_size, info.st_mtime_ns)
            if signature == self._signature:
                return
            with open(self._file, "rb") as file:
                lines = file.read().splitlines()
        except OSError as exc:
            self._trouble_with(f"{self._where}.bearer_tokens_file {self._file!r}: {exc.strerror}", initial)
            return
        tokens = [line.strip() for line in lines if line.strip()]
        if not tokens:
            self._trouble_with(f"{self._where}.bearer_tokens_file {self._file!r} holds no token", initial)
            return
        self._tokens, self._signature, self._trouble = tokens, signature, ""
        if not initial:
            log.info("%s: %d bearer token(s) read from %s", self._where, len(tokens), self._file)

    def _trouble_with(self, message: str, initial: bool) -> None:
        if initial:
            raise OSError(message)
        if message != self._trouble:
            log.warning("%s; keeping the tokens in use", message)
            self._trouble = message


def guards(
    name: str, endpoint: Endpoint, auth: BearerAuthConfig | None, auth_key: str, tls: TlsServerConfig | None, tls_key: str,
) -> tuple[BearerTokens | None, ServerTls | None]:
    """A listener's token check and TLS, from their config keys (named in problems); tokens
    checked without TLS are warned about."""
    tokens = BearerTokens(auth, auth_key) if auth is not None else None
    server_tls = ServerTls(tls, tls_key) if tls is not None else None
    if tokens is not None and server_tls is None:
        warn_if_exposed(name, endpoint)
    return tokens, server_tls


def warn_if_exposed(name: str, endpoint: Endpoint) -> None:
    """Tokens checked on a plaintext listener that other hosts can reach travel readable by anyone
    on the way: say so once, at start."""
    host = endpoint.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        log.warning("%s on %s: bearer tokens are checked, but without tls they cross the network in plaintext", name, endpoint)
