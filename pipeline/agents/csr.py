"""The subject a CertificateSigningRequest asks for, read from its PKCS#10 request (``spec.request``: base64 of a
PEM ``CERTIFICATE REQUEST``) with a minimal DER walker.

A certificate from the kube-apiserver-client signer authenticates as its subject: the common name (CN) is the user,
each organization (O) a group. ``O=system:masters`` is cluster-admin that no RBAC change can take away (the group
bypasses authorization) for the certificate's lifetime; ``CN=system:node:...`` is a node's identity. Those values
sit base64- and DER-encoded in the event, out of reach of any text match, so the rules get them decoded
(``csr_organizations``, ``csr_common_name``). Strings are decoded by their DER type as Go's crypto/x509 does
(UTF8String, PrintableString, IA5String, NumericString, T61String, BMPString), so a group spelled in UTF-16
reads the same. The API server refuses a request it cannot parse; anything this walker cannot read gives no
subject (csr-created still alerts on the request itself).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

OID_CN = b"\x55\x04\x03"  # 2.5.4.3
OID_O = b"\x55\x04\x0a"  # 2.5.4.10
STRING_CODECS = {0x0C: "utf-8", 0x13: "latin-1", 0x16: "latin-1", 0x12: "latin-1", 0x14: "latin-1",
                 0x1E: "utf-16-be", 0x1C: "utf-32-be"}  # fmt: skip
MAX_REQUEST = 64 * 1024  # a CSR is a few hundred bytes; the API server's own limit on a request body is far above


class _Bad(ValueError):
    pass


def _tlv(b: bytes, i: int, end: int) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at ``i``."""
    if i + 2 > end:
        raise _Bad("short")
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 4 or i + k > end:
            raise _Bad("length")
        n = int.from_bytes(b[i : i + k], "big")
        i += k
    if i + n > end:
        raise _Bad("overrun")
    return tag, i, i + n


def subject(der: bytes) -> tuple[str, list[str]]:
    """(common name, organizations) of a DER CertificationRequest; the last CN wins, as in Go's pkix.Name."""
    tag, s, e = _tlv(der, 0, len(der))  # CertificationRequest
    if tag != 0x30:
        raise _Bad("not a sequence")
    tag, s, e = _tlv(der, s, e)  # CertificationRequestInfo
    if tag != 0x30:
        raise _Bad("no request info")
    tag, _, i = _tlv(der, s, e)  # version
    if tag != 0x02:
        raise _Bad("no version")
    tag, s, e = _tlv(der, i, e)  # subject Name: SEQUENCE OF RelativeDistinguishedName
    if tag != 0x30:
        raise _Bad("no subject")
    cn, orgs = "", []
    while s < e:
        tag, rs, re_ = _tlv(der, s, e)  # RDN: SET OF AttributeTypeAndValue
        s = re_
        if tag != 0x31:
            raise _Bad("rdn")
        while rs < re_:
            tag, a, ae = _tlv(der, rs, re_)
            rs = ae
            if tag != 0x30:
                raise _Bad("attribute")
            tag, os_, oe = _tlv(der, a, ae)
            if tag != 0x06:
                raise _Bad("oid")
            vtag, vs, ve = _tlv(der, oe, ae)
            codec = STRING_CODECS.get(vtag)
            oid = der[os_:oe]
            if oid not in (OID_CN, OID_O) or codec is None:
                continue
            try:
                value = der[vs:ve].decode(codec)
            except UnicodeDecodeError:
                raise _Bad("string") from None
            if oid == OID_CN:
                cn = value
            else:
                orgs.append(value)
    return cn, orgs


def pem_der(pem: bytes) -> bytes:
    """The DER of the first CERTIFICATE REQUEST block of a PEM text (header lines skipped)."""
    text = pem.decode("ascii", "replace")
    begin = text.find("-----BEGIN CERTIFICATE REQUEST-----")
    end = text.find("-----END CERTIFICATE REQUEST-----", begin)
    if begin < 0 or end < 0:
        raise _Bad("no CERTIFICATE REQUEST block")
    body = text[begin + len("-----BEGIN CERTIFICATE REQUEST-----") : end]
    lines = [ln.strip() for ln in body.splitlines() if ln.strip() and ":" not in ln]
    try:
        return base64.b64decode("".join(lines), validate=True)
    except binascii.Error:
        raise _Bad("bad base64") from None


def requested_subject(obj: Any) -> tuple[str, list[str]] | None:
    """(CN, O list) a CertificateSigningRequest object asks for; None when it has no readable request."""
    spec = obj.get("spec") if isinstance(obj, dict) else None
    req = spec.get("request") if isinstance(spec, dict) else None
    if not isinstance(req, str) or not req or len(req) > MAX_REQUEST:
        return None
    try:
        return subject(pem_der(base64.b64decode(req, validate=True)))
    except (binascii.Error, _Bad):
        return None
