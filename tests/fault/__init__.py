"""Reliability and security under faults: STS and Kubernetes API faults, SIGKILLs, leader failover,
hostile targets and secret leaks, each checked against every Secret version the operator wrote."""
