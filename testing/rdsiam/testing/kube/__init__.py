"""A Kubernetes API server emulator for tests, built on kmock, that kubectl and kopf accept.

Usage::

    from rdsiam.testing.kube import KubeEmulator

    with KubeEmulator() as emu:              # 127.0.0.1, a free port, a background thread + loop
        emu.apply_manifest("crds/")          # CRDs register their resources (discovery, schema, CEL)
        client = emu.client()                # rdsiam.testing.kube.client.KubeClient
        client.create("/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}})
        os.environ["KUBECONFIG"] = emu.kubeconfig   # kubectl, kopf, the kubernetes client
        emu.inject(r"/rdsiamcredentials/.*/status", method="PATCH", status=409, times=2)
        emu.requests.rbac()                  # {(group, resource, verb), ...} actually used
        emu.compact()                        # older resourceVersions now get 410 Gone

What behaves like kube-apiserver
    * Server-set metadata: ``uid``, ``resourceVersion`` (one global counter, bumped only
      by real changes), ``creationTimestamp``, ``generation`` (custom resources and
      spec-bearing built-ins; bumped only when something outside metadata/status
      changes), ``generateName``, ``deletionTimestamp``.
    * ``Status`` errors with the real reasons, codes, details and wording: NotFound,
      AlreadyExists, Conflict (stale ``resourceVersion`` on PUT/PATCH, failed
      preconditions), Invalid (422, with causes and field paths), BadRequest, Forbidden
      (namespace terminating), Expired (410), MethodNotAllowed, UnsupportedMediaType.
    * POST, GET, LIST (``limit``/``continue`` pagination), PUT (replace; custom resources
      need a ``resourceVersion``), PATCH as JSON merge patch, JSON patch (RFC 6902,
      including ``test``: a failed test is 422 as kopf expects), strategic merge patch
      (applied as a merge patch: see gaps), ``apply-patch+yaml`` (approximated as
      create-or-merge), DELETE (``propagationPolicy``, ``preconditions``),
      deletecollection, ``dryRun=All``, ``fieldValidation`` (Strict/Warn/Ignore).
    * The status subresource: writes to the main resource keep ``.status``; writes to
      ``/status`` change nothing but ``.status``.
    * Label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, exists, ``!`` not exists)
      and field selectors (``metadata.name``, ``metadata.namespace``, Event
      ``involvedObject.*``/``reason``/``type``/``source``, Secret ``type``, Namespace
      ``status.phase``, CRD ``selectableFields``) on list, watch and deletecollection.
    * Watches: resume from a ``resourceVersion`` out of a bounded per-resource history
      (``410 Gone`` as an ``ERROR`` event once compacted: :meth:`KubeEmulator.compact`),
      ``timeoutSeconds``, ``allowWatchBookmarks`` (periodic and end-of-stream BOOKMARKs),
      ``sendInitialEvents`` (initial-events-end bookmark), ADDED/DELETED when an object
      enters/leaves a selector on modification, JSON content type.
    * Garbage collection by ``ownerReferences`` in the background (also of objects whose
      owner never existed), honouring finalizers (``deletionTimestamp`` is set and the
      object stays until its finalizers are removed); ``Orphan`` and ``Foreground``
      propagation; namespace deletion removes the namespace's content first; CRD deletion
      removes its objects.
    * Namespaces (``default``, ``kube-system``, ``kube-public``, ``kube-node-lease``
      pre-created, each new one gets a ``default`` ServiceAccount); creating into a missing
      namespace is 404, into a terminating one 403.
    * TokenRequest (``POST .../serviceaccounts/NAME/token``): an RS256 JWT with the claims
      of a real ServiceAccount token; the key is exposed as a JWKS and OIDC discovery
      document (``/openid/v1/jwks``, ``/.well-known/openid-configuration``).
    * CustomResourceDefinitions: applying one registers its served versions in discovery,
      sets ``Established``/``NamesAccepted``; custom objects are defaulted, pruned and
      validated against the structural ``openAPIV3Schema`` and its
      ``x-kubernetes-validations`` CEL rules (cel-python), with the real server's messages.
    * Discovery (``/api``, ``/api/v1``, ``/apis``, ``/apis/G``, ``/apis/G/V``), ``/version``,
      ``/healthz``, a minimal ``/openapi/v3`` (paths only: enough for kubectl's default
      server-side field validation); server-side printing (``as=Table``) with CRD
      ``additionalPrinterColumns`` and the usual built-in columns; metadata-only answers
      (``as=PartialObjectMetadata`` for get and watch, ``as=PartialObjectMetadataList`` for list, 406
      for the wrong shape, as a metadata informer asks); protobuf request bodies of
      the kinds ``kubectl create`` sends. So ``kubectl get/describe/apply (client- and
      server-side)/create/patch/label/wait/delete/get -w`` work with the kubeconfig at
      :attr:`KubeEmulator.kubeconfig`.
    * Messages were compared with a kube-apiserver built from source (see
      ``tests/integration/test_emulator_fidelity.py``): schema and CEL errors (including the
      "some validation rules were not checked" blocking error), conflicts, failed JSON patch
      tests, TokenRequest validation, name validation, selectors and discovery match.
    * Fault injection (:meth:`KubeEmulator.inject`, :meth:`KubeEmulator.drop_watches`), streams
      ended the normal way (:meth:`KubeEmulator.end_watches`), a tap on every committed change
      (:meth:`KubeEmulator.on_change`: what an audit records, which no dropped watch can hide) and a
      bounded request log with RBAC attributes (:attr:`KubeEmulator.requests`).

How it relates to kmock 0.8
    :class:`~rdsiam.testing.kube.server.ApiHandler` subclasses
    ``kmock.KubernetesEmulator`` and keeps kmock's handler protocol, ``kmock.Request``, its
    DSL reactions (``emu.handler[...] << ...``, consulted before the emulator's own logic
    when a test adds any) and its bundled built-in resource catalogue. Replaced, because
    they are unusable for this purpose: the request dispatch (it re-scans the whole request
    log on every request: O(history)), ``parse_path`` (crashes on ``/api/v1/namespaces``),
    ``ObjectsArray`` (no resourceVersion/uid/..., linear scans), discovery (core group
    version ``/v1``), watch streams (ignore ``resourceVersion``/``timeoutSeconds``/
    bookmarks and replay everything), error bodies (tracebacks instead of Status) and
    ``kmock.Server`` (its process-wide aiohttp DNS interceptor must be exited in LIFO
    order, which breaks with several emulators in threads): the emulator runs its own
    ``aiohttp.web.Server``.

Known gaps
    * No authentication or authorization: any bearer token (or none) is accepted; no RBAC,
      no admission (webhooks, quotas, LimitRanges), no audit, no API priority & fairness.
    * Strategic merge patch does not merge lists by their patch merge key (lists are
      replaced); server-side apply has no field ownership (no conflicts, no removal of
      fields dropped from the manifest), no ``managedFields``.
    * JSON responses only (protobuf and CBOR are not served; protobuf request bodies only for
      Secret, ConfigMap, Namespace, ServiceAccount, TokenRequest and DeleteOptions); the
      OpenAPI documents have no schemas (``/openapi/v2`` is 404: no client-side validation,
      no ``kubectl explain``); no aggregated discovery (kubectl falls back).
    * One storage version per resource, no conversion (other CRD versions only get their
      ``apiVersion`` rewritten); core ``events`` and ``events.k8s.io`` are stored apart.
    * Built-in kinds are not validated beyond names, Secret/ConfigMap data and a few
      immutable fields; no defaults for built-ins except Secret ``type`` and Namespace
      status; no controllers besides garbage collection, namespace and CRD cleanup and
      the ``default`` ServiceAccount (no Pods run, no Deployments roll out).
    * CEL: no static type checking and no cost estimation (a real server may reject a CRD
      whose rules the emulator accepts, e.g. string concatenation without ``maxLength``), no
      ``optionalOldSelf``, no ``url``/``quantity``/``ip``/``cidr``/``format`` libraries;
      ratcheting compares values by equality (lists by index). Outcomes are memoised per
      rule and (self, oldSelf).
    * Label selector syntax errors are worded differently from the real lexer's.
    * ``continue`` tokens page through the current state (no consistent snapshot);
      ``resourceVersionMatch`` is ignored for lists (always the latest state).
    * TokenRequest ignores ``boundObjectRef`` claims and never rejects on audiences.
"""

from __future__ import annotations

from rdsiam.testing.kube.client import KubeApiError, KubeClient
from rdsiam.testing.kube.emulator import DEFAULT_NAMESPACES, KubeEmulator
from rdsiam.testing.kube.errors import ApiError
from rdsiam.testing.kube.faults import Fault, RequestLog, RequestRecord
from rdsiam.testing.kube.paths import resource_url

__all__ = [
    "DEFAULT_NAMESPACES",
    "ApiError",
    "Fault",
    "KubeApiError",
    "KubeClient",
    "KubeEmulator",
    "RequestLog",
    "RequestRecord",
    "resource_url",
]
