"""The rdsiam operator: ``RdsIamCredential`` resources in, IAM-token Secrets out.

Imports flow one way: ``handlers`` (kopf) -> ``scheduler``/``reconcile`` (decisions and
orchestration) -> ``kubeapi``/``aws`` (I/O). Nothing here builds an API client at import time.
"""
