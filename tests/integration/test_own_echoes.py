"""Own-write watch events against the Kubernetes API emulator (see tests/scenarios/own_echoes.py)."""

from tests.scenarios.own_echoes import *  # noqa: F401,F403
