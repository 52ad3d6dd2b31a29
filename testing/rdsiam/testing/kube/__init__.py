"""A Kubernetes API server emulator for the demo and the quick test tiers, built on kmock's catalogue.

What it is for: ``make demo`` (``rdsiam.testing.demo``) and the tiers that must run in seconds
without a cluster: ``tests/unit``, ``tests/integration`` (the operator as a real process, kopf
and kubectl against it, the scenarios of ``tests/scenarios``), ``tests/property``, and the
emulator benchmarks (``benchmarks/bench_scale.py``, ``benchmarks/bench_identity.py``). It does
what those use and nothing else. Real behaviour is checked elsewhere: ``tests/realapi`` runs the
same scenarios against kube-apiserver + etcd + kube-controller-manager built from Go modules, and
``tests/e2e`` against a real node (kubelet, pods, the chart). The emulator's own answers are
compared with a real kube-apiserver in ``tests/integration/test_emulator_fidelity.py``.

Usage::

    from rdsiam.testing.kube import KubeEmulator

    with KubeEmulator() as emu:              # 127.0.0.1, a free port, a background thread + loop
        emu.apply_manifest("crds/")          # CRDs register their resources (discovery, schema, CEL)
        client = emu.client()                # rdsiam.testing.kube.client.KubeClient
        client.create("/api/v1/namespaces/default/secrets", {"metadata": {"name": "s"}})
        os.environ["KUBECONFIG"] = emu.kubeconfig   # kubectl, kopf, the kubernetes client
        emu.inject(r"/secrets$", method="POST", status=500)   # the next matching request fails
        emu.end_watches(r"/secrets")         # open watches end as at timeoutSeconds; clients resume
        emu.requests.filter(method="POST", path=r"/token$")   # the request log, with RBAC attributes

What it does
    * Server-set metadata (``uid``, one global ``resourceVersion`` bumped only by real changes,
      ``creationTimestamp``, ``generation``, ``generateName``, ``deletionTimestamp``) and
      ``Status`` errors worded like the real server's (NotFound, AlreadyExists, Conflict,
      Invalid with causes, BadRequest, Forbidden, Expired, MethodNotAllowed, UnsupportedMediaType).
    * POST, GET, LIST, PUT, PATCH (JSON merge patch, JSON patch with ``test`` as kopf uses it,
      strategic merge patch of built-ins as ``kubectl apply`` sends it), DELETE (``Background``
      and ``Foreground`` propagation, ``preconditions``); the status subresource.
    * Label selectors and field selectors (``metadata.*``, Event ``involvedObject.*`` for
      ``kubectl describe`` and ``kubectl get events``, a few built-in fields) on lists and watches.
    * Watches: resume from a ``resourceVersion`` out of a bounded per-resource history (``410
      Gone`` as an ``ERROR`` event beyond it), ``timeoutSeconds``, ``allowWatchBookmarks``,
      ADDED/DELETED when an object enters/leaves a selector.
    * Finalizers, garbage collection by ``ownerReferences`` (also of objects whose owner never
      existed), namespace deletion (content first), a ``default`` ServiceAccount per namespace.
    * CRDs: served versions in discovery, ``Established``; custom objects defaulted, pruned and
      validated against ``openAPIV3Schema`` and its ``x-kubernetes-validations`` CEL rules.
    * TokenRequest (``POST .../serviceaccounts/NAME/token``): an RS256 JWT with a real token's
      claims, verified in process with :meth:`KubeEmulator.verify_token` (``serviceAccountName``).
    * What kubectl needs: discovery, ``/version``, a paths-only ``/openapi/v3`` (``kubectl apply``
      fails without it), Table output (CRD printer columns, Events' columns, Name/Age for other
      built-ins) and the protobuf bodies of ``kubectl create secret|namespace``.
    * For tests: :meth:`KubeEmulator.inject` (a status for matching requests, a 410 on a watch as
      an ``ERROR`` event), :meth:`KubeEmulator.end_watches`, the bounded request log
      :attr:`KubeEmulator.requests` (RBAC verb/group/resource of each request).

What it does not do (use ``tests/realapi`` or ``tests/e2e`` for these)
    * No authentication or authorization (any bearer token is accepted, no RBAC), no admission
      (webhooks, quotas, LimitRanges), no audit, no API priority and fairness, no TLS.
    * No ``dryRun``, no ``fieldValidation`` (unknown fields of custom resources are always pruned,
      silently), no server-side apply, no ``Orphan`` propagation, no deletecollection, no
      pagination (``limit``/``continue`` are ignored: one answer has everything), no
      ``resourceVersionMatch``, no ``sendInitialEvents``, no metadata-only
      (``PartialObjectMetadata``) answers, no Table watches (``kubectl get -w``).
    * Strategic merge patch does not merge lists by key (lists are replaced), no ``managedFields``.
    * JSON responses only; protobuf request bodies only for Secret and Namespace; the OpenAPI
      documents have no schemas (no ``kubectl explain``, no client-side validation); no
      aggregated discovery (kubectl falls back); no JWKS or OIDC discovery endpoints.
    * One storage version per resource, no conversion; CRDs themselves are not validated and a
      deleted CRD drops its objects at once (their finalizers ignored).
    * Built-in kinds are barely validated (names, metadata, Secret data, a few immutable fields)
      and barely defaulted; no controllers but garbage collection, namespace cleanup and the
      ``default`` ServiceAccount: no Pods run, no kubelet, no Deployments; core ``events`` and
      ``events.k8s.io`` are stored apart. Label selector syntax errors are worded differently.
    * CEL: no type checking or cost estimation (a real server may reject a CRD the emulator
      accepts), no ``optionalOldSelf``, no ``url``/``quantity``/``ip``/``cidr``/``format``.
    * TokenRequest ignores ``boundObjectRef`` and audiences are never checked on use.
"""

from __future__ import annotations

from rdsiam.testing.kube.client import KubeApiError, KubeClient
from rdsiam.testing.kube.emulator import KubeEmulator
from rdsiam.testing.kube.errors import ApiError
from rdsiam.testing.kube.faults import Fault, RequestLog, RequestRecord

__all__ = [
    "ApiError",
    "Fault",
    "KubeApiError",
    "KubeClient",
    "KubeEmulator",
    "RequestLog",
    "RequestRecord",
]
