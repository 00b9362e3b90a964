"""SSL contexts for mutual TLS: the aggregator (uvicorn) asks for client certificates signed by the federation's
CA; a worker (httpx) verifies the aggregator against the same CA and presents its own certificate."""

from __future__ import annotations

import ssl

from services.config import ConfigError, TlsSettings


def _check_files(tls: TlsSettings, node: str) -> None:
    missing = [str(p) for p in (tls.ca, tls.cert(node), tls.key(node)) if not p.is_file()]
    if missing:
        raise ConfigError(f"tls.enabled is true but {', '.join(missing)} do not exist: create them with "
                          f"`make certs` (or python -m services.security certs --dir {tls.dir})")


def uvicorn_ssl_options(tls: TlsSettings) -> dict:
    """Keyword arguments for uvicorn.run: server certificate, and the CA that client certificates must chain to."""
    if not tls.enabled:
        return {}
    _check_files(tls, "aggregator")
    return {"ssl_certfile": str(tls.cert("aggregator")), "ssl_keyfile": str(tls.key("aggregator")),
            "ssl_ca_certs": str(tls.ca),
            "ssl_cert_reqs": ssl.CERT_REQUIRED if tls.require_client_cert else ssl.CERT_OPTIONAL}


def client_context(tls: TlsSettings, node: str) -> ssl.SSLContext | bool:
    """For httpx's ``verify``: trust only the federation's CA and present ``node``'s certificate."""
    if not tls.enabled:
        return True
    _check_files(tls, node)
    context = ssl.create_default_context(cafile=str(tls.ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert(node)), str(tls.key(node)))
    return context


def peer_certificate_protocol():
    """uvicorn's HTTP protocol (httptools) that tells the app who the TLS client is: the ASGI TLS extension's
    ``client_cert_name`` (RFC 4514) in ``scope["extensions"]["tls"]``, plus its common name, which uvicorn leaves
    out. Passed as ``uvicorn.run(http=...)`` when tls.enabled; the certificate was verified against the CA by then."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class PeerCertificateProtocol(HttpToolsProtocol):
        _peer: dict | None = None

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._peer is None:
                self._peer = _peer_of(self.transport)
            if self._peer:
                self.scope["extensions"] = {**self.scope.get("extensions", {}), "tls": self._peer}

    return PeerCertificateProtocol


def _peer_of(transport) -> dict:
    ssl_object = transport.get_extra_info("ssl_object")
    cert = ssl_object.getpeercert() if ssl_object is not None else None
    if not cert:
        return {}
    subject = [(k, v) for rdn in cert.get("subject", ()) for k, v in rdn]
    names = {"commonName": "CN", "organizationName": "O"}
    return {"client_cert_name": ",".join(f"{names.get(k, k)}={v}" for k, v in reversed(subject)),
            "client_cert_cn": next((v for k, v in subject if k == "commonName"), None)}


def client_certificate_id(scope) -> str | None:
    """The common name of the request's verified TLS client certificate, or None."""
    return ((scope.get("extensions") or {}).get("tls") or {}).get("client_cert_cn")
