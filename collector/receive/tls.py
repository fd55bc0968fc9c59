"""A listener's TLS: its certificate, key and client CA read from disk, and read again when they
change, so a rotated certificate is used without a restart.

Both servers take new material per connection: the aiohttp listeners ask ``context()`` for the
SSLContext of each connection they accept, grpcio calls ``grpc_credentials()``'s fetcher before
each handshake. Files are looked at (``stat``) at most once per ``reload_interval`` and read only
when they changed; a half-rotated pair that does not load keeps the current material and is tried
again at the next interval.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from dataclasses import dataclass

import grpc

from tailsampler.collector.config import TlsServerConfig

log = logging.getLogger(__name__)

_VERSIONS = {
    "1.0": ssl.TLSVersion.TLSv1,
    "1.1": ssl.TLSVersion.TLSv1_1,
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}


class TlsSetupError(OSError):
    """A certificate, key or CA file that cannot be used; the message names the key and file."""


@dataclass(frozen=True, slots=True)
class _Material:
    cert: bytes
    key: bytes
    client_ca: bytes | None
    signature: tuple[object, ...]  # what the files looked like on disk when read


class ServerTls:
    def __init__(self, config: TlsServerConfig, where: str) -> None:
        self._config = config
        self._where = where  # the config key, for messages
        self._paths = [("cert_file", config.cert_file), ("key_file", config.key_file)]
        if config.client_ca_file:
            self._paths.append(("client_ca_file", config.client_ca_file))
        self._lock = threading.Lock()  # grpcio's fetcher runs on its own threads
        self._material, self._context = self._load()
        self._next_check = time.monotonic() + float(config.reload_interval)

    @property
    def mutual(self) -> bool:
        return self._material.client_ca is not None

    def context(self) -> ssl.SSLContext:
        """The SSLContext for a new connection: the newest material that loads."""
        self._reload_if_changed()
        return self._context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that take up changed files before a new connection's handshake."""
        return grpc.dynamic_ssl_server_credentials(
            self._grpc_configuration(self._material),
            self._grpc_fetch,
            require_client_authentication=self.mutual,
        )

    def _grpc_fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """grpcio's fetcher: None keeps the current configuration. It must never raise, or the
        handshake in progress fails."""
        try:
            if self._reload_if_changed():
                return self._grpc_configuration(self._material)
        except Exception:  # noqa: BLE001 - anything escaping here breaks every new handshake
            log.exception("%s: certificate reload failed; keeping the current certificate", self._where)
        return None

    @staticmethod
    def _grpc_configuration(material: _Material) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([(material.key, material.cert)], material.client_ca)

    def _reload_if_changed(self) -> bool:
        """Read the files again when ``reload_interval`` has passed and they changed; True when
        new material is in use."""
        if not self._config.reload_interval or time.monotonic() < self._next_check:
            return False
        with self._lock:
            now = time.monotonic()
            if now < self._next_check:
                return False
            self._next_check = now + float(self._config.reload_interval)
            try:
                if self._signature() == self._material.signature:
                    return False
                self._material, self._context = self._load()
            except TlsSetupError as exc:
                log.warning("%s: keeping the current certificate: %s", self._where, exc)
                return False
        log.info("%s: certificate reloaded from %s", self._where, self._config.cert_file)
        return True

    def _signature(self) -> tuple[object, ...]:
        out: list[object] = []
        for key, path in self._paths:
            try:
                info = os.stat(path)
            except OSError as exc:
                raise TlsSetupError(f"{self._where}.{key} {path!r}: {exc.strerror}") from None
            out.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(out)

    def _load(self) -> tuple[_Material, ssl.SSLContext]:
        """The files' bytes (for grpcio) and an SSLContext built from the same files; raises
        TlsSetupError when they do not load, or changed while they were being read, so both
        servers always hold one consistent certificate, key and CA."""
        before = self._signature()
        contents: dict[str, bytes] = {}
        for key, path in self._paths:
            try:
                with open(path, "rb") as file:
                    contents[key] = file.read()
            except OSError as exc:
                raise TlsSetupError(f"{self._where}.{key} {path!r}: {exc.strerror}") from None
        context = self._make_context()
        if self._signature() != before:
            raise TlsSetupError(f"{self._where}: the files changed while they were read; trying again later")
        material = _Material(contents["cert_file"], contents["key_file"], contents.get("client_ca_file"), before)
        return material, context

    def _make_context(self) -> ssl.SSLContext:
        config = self._config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = _VERSIONS[str(config.min_version)]
        context.set_alpn_protocols(["http/1.1"])
        try:
            context.load_cert_chain(config.cert_file, config.key_file)
        except (ssl.SSLError, OSError) as exc:
            raise TlsSetupError(
                f"{self._where}: cert_file {config.cert_file!r} and key_file {config.key_file!r} do not load: {exc}"
            ) from None
        if config.client_ca_file:
            try:
                context.load_verify_locations(cafile=config.client_ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise TlsSetupError(f"{self._where}.client_ca_file {config.client_ca_file!r}: {exc}") from None
            context.verify_mode = ssl.CERT_REQUIRED
        return context
