"""ServiceAccount tokens (TokenRequest API) signed RS256 by a key the emulator holds.

Tokens carry the claims kube-apiserver puts into projected/requested ServiceAccount tokens:
``iss`` (the emulator's issuer URL), ``sub`` = ``system:serviceaccount:NS:NAME``, ``aud``
(the requested audiences), ``exp``/``iat``/``nbf``, ``jti`` and the ``kubernetes.io`` claim
with the namespace and ServiceAccount name/uid. The key is not published (no JWKS, no OIDC
discovery): tests verify tokens in process with :meth:`TokenIssuer.verify`.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import threading
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["DEFAULT_EXPIRATION", "MIN_EXPIRATION", "TokenIssuer"]

MIN_EXPIRATION = 600
DEFAULT_EXPIRATION = 3600
MAX_EXPIRATION = 2**32


class TokenIssuer:
    """An RSA key pair (generated lazily: ~0.1 s) and the issuer URL it signs for."""

    def __init__(self, issuer: str = "") -> None:
        self.issuer = issuer
        self._key: rsa.RSAPrivateKey | None = None
        self._lock = threading.Lock()

    @property
    def key(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    @property
    def key_id(self) -> str:
        """Like kube-apiserver: base64url(sha256(DER of the public key))."""
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()

    def mint(
        self,
        namespace: str,
        name: str,
        sa_uid: str,
        audiences: list[str],
        expiration_seconds: int,
        now: float | None = None,
    ) -> tuple[str, str]:
        """A signed token and its RFC 3339 expiration timestamp."""
        issued = int(now if now is not None else time.time())
        expires = issued + expiration_seconds
        claims = {
            "aud": audiences,
            "exp": expires,
            "iat": issued,
            "nbf": issued,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": sa_uid}},
            "sub": f"system:serviceaccount:{namespace}:{name}",
        }
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.key_id})
        stamp = datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return token, stamp

    def verify(self, token: str, audience: str | list[str] | None = None) -> dict[str, Any]:
        """Decode and verify a token minted here (signature, expiry, issuer, audience)."""
        decoded: dict[str, Any] = jwt.decode(
            token,
            self.key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=self.issuer,
            options={"verify_aud": audience is not None},
        )
        return decoded
