"""Pure parts of the wire probe: TLS settings per sslmode, like libpq."""

from __future__ import annotations

import ssl

import pytest

from rdsiam import _pgwire


@pytest.mark.parametrize("sslmode,rootcert,verify,check_name", [
    ("prefer", None, ssl.CERT_NONE, False),
    ("require", None, ssl.CERT_NONE, False),
    ("require", "system", ssl.CERT_REQUIRED, False),  # libpq: require + a root certificate = verify-ca
    ("verify-ca", "system", ssl.CERT_REQUIRED, False),
    ("verify-full", "system", ssl.CERT_REQUIRED, True),
    ("verify-full", None, ssl.CERT_REQUIRED, True),  # the system trust store
])
def test_tls_context_follows_libpq_sslmode(sslmode: str, rootcert: str | None, verify: ssl.VerifyMode,
                                           check_name: bool) -> None:
    ctx = _pgwire.tls_context(sslmode, rootcert)
    assert ctx.verify_mode == verify
    assert ctx.check_hostname is check_name


def test_tls_context_with_a_missing_root_certificate_raises_oserror() -> None:
    with pytest.raises(OSError):
        _pgwire.tls_context("verify-ca", "/nonexistent/rds-ca.pem")


def test_error_fields_are_parsed() -> None:
    payload = b"SFATAL\0VFATAL\0C28000\0MPAM authentication failed for user \"u\"\0Rauth_failed\0\0"
    fields = _pgwire._fields(payload)
    assert fields["C"] == "28000" and fields["M"] == 'PAM authentication failed for user "u"'
