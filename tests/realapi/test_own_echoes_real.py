"""Own-write watch events against kube-apiserver (see tests/scenarios/own_echoes.py): its wire format is
what the recognition reads."""

from tests.scenarios.own_echoes import *  # noqa: F401,F403
