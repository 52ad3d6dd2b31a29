"""The rdsiam operator: ``RdsIamCredential`` resources in, IAM-token Secrets out.

Imports flow one way: ``handlers`` (kopf) -> ``reconcile`` (gather and apply) -> ``plan``/``policy``
(pure decisions); I/O through ``kube`` (the kubernetes client) and ``aws``. Nothing here builds an API
client at import time.
"""
