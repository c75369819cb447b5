"""Plain HTTP(S) access to a cluster as a kubeconfig describes it: the server, the CA to trust
and the bearer token, for the few clients that are not the ``kubernetes`` client or kubectl
(raw API checks in tests, Prometheus' discovery, the fault-injection client, benchmarks)."""

from __future__ import annotations

import base64
import http.client
import os
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster.faults import FaultClient


@dataclass(frozen=True)
class Access:
    server: str  # https://host:port
    ca_pem: bytes
    token: str

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Access:
        """The current context's cluster and user; a kubeconfig without them is an error."""
        config = yaml.safe_load(path.read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        user = next(u for u in config["users"] if u["name"] == context["context"]["user"])
        ca = base64.b64decode(cluster["cluster"].get("certificate-authority-data", ""))
        return cls(cluster["cluster"]["server"], ca, user["user"].get("token", ""))

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.server).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.server).port or 443

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def connection(self, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host, self.port, timeout=timeout, context=self.ssl_context()
        )

    def request(
        self, path: str, data: bytes | None = None, method: str | None = None, **headers: str
    ) -> urllib.request.Request:
        """A request for ``path`` on the server, carrying the token."""
        return urllib.request.Request(  # noqa: S310 - the server comes from the kubeconfig
            self.server + path, data=data, method=method, headers={**self.headers(), **headers}
        )

    def open(self, request: urllib.request.Request | str, timeout: float = 10) -> Any:
        """``urllib.request.urlopen`` trusting the cluster's CA."""
        if isinstance(request, str):
            request = self.request(request)
        return urllib.request.urlopen(request, timeout=timeout, context=self.ssl_context())  # noqa: S310

    def write_credentials(self, folder: Path) -> tuple[Path, Path]:
        """``ca.crt`` and ``token`` (mode 0600) in ``folder``, for clients configured by file
        (Prometheus' ``tls_config.ca_file`` and ``authorization.credentials_file``)."""
        folder.mkdir(parents=True, exist_ok=True)
        ca, token = folder / "ca.crt", folder / "token"
        ca.write_bytes(self.ca_pem)
        token.touch(mode=0o600)
        os.chmod(token, 0o600)
        token.write_text(self.token)
        return ca, token

    def faults(self) -> FaultClient:
        """localcluster's fault-injection client (its server must run with ``--faults``)."""
        return FaultClient(self.server, self.ssl_context(), self.token)
