"""Condition reasons: CamelCase constants shared by status conditions, Events and metrics."""

from __future__ import annotations

TOKEN_ISSUED = "TokenIssued"
INVALID_SPEC = "InvalidSpec"
CREDENTIALS_UNAVAILABLE = "CredentialsUnavailable"
ACCESS_DENIED = "AccessDenied"
THROTTLED = "Throttled"
SECRET_CONFLICT = "SecretConflict"
KUBERNETES_ERROR = "KubernetesError"
IDENTITY_NOT_ALLOWED = "IdentityNotAllowed"
SERVICE_ACCOUNT_NOT_FOUND = "ServiceAccountNotFound"
SERVICE_ACCOUNT_NOT_ANNOTATED = "ServiceAccountNotAnnotated"
INTERNAL_ERROR = "InternalError"  # a bug or an unexpected failure in the operator (see its log)
ENDPOINT_NOT_RESOLVED = "EndpointNotResolved"  # spec.resolveCNAME found no RDS endpoint behind the host

# Reasons of the `Connected` condition (spec.verify).
CONNECTED = "Connected"
LOGIN_REJECTED = "LoginRejected"
TLS_REQUIRED = "TLSRequired"
TLS_ERROR = "TLSError"
DNS_ERROR = "DNSError"
CONNECT_TIMEOUT = "ConnectTimeout"
CONNECTION_REFUSED = "ConnectionRefused"
NETWORK_ERROR = "NetworkError"
VERIFY_FAILED = "VerifyFailed"
NOT_SUPPORTED = "NotSupported"  # Connected=Unknown: not probed; unused since MySQL is (kept for old statuses)
CERTIFICATE_NOT_VERIFIABLE = "CertificateNotVerifiable"  # Connected=Unknown: no CA to check the server with

# Event reasons for successful work.
ROTATED = "TokenRotated"

FAILURE_REASONS = frozenset({
    INVALID_SPEC, CREDENTIALS_UNAVAILABLE, ACCESS_DENIED, THROTTLED, SECRET_CONFLICT,
    KUBERNETES_ERROR, IDENTITY_NOT_ALLOWED, SERVICE_ACCOUNT_NOT_FOUND, SERVICE_ACCOUNT_NOT_ANNOTATED,
    ENDPOINT_NOT_RESOLVED,
})
# Failures that no retry can fix until the resource (or something it names) changes.
PERMANENT_REASONS = frozenset({INVALID_SPEC, IDENTITY_NOT_ALLOWED})
