"""TLS contexts of kaudit's HTTP servers (the bridge, the query API and dashboard) and of its HTTP clients."""

from __future__ import annotations

import ssl


def make_ssl_context(cert: str | None, key: str | None, client_ca: str | None = None) -> ssl.SSLContext | None:
    """Server TLS (1.2+); None without a certificate. With a client CA, client certificates are verified when
    presented (CERT_OPTIONAL, so callers with bearer tokens need none)."""
    if bool(cert) != bool(key):
        raise ValueError("--tls-cert and --tls-key go together")
    if not cert:
        if client_ca:
            raise ValueError("--client-ca needs --tls-cert and --tls-key (mTLS is TLS)")
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(ca_file: str | None) -> ssl.SSLContext | None:
    """For ``kaudit query/sql/rbac`` talking to an https API: verify it against ``ca_file`` (else the system CAs)."""
    if not ca_file:
        return None
    return ssl.create_default_context(cafile=ca_file)
