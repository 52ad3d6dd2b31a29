"""Fixtures of the fault tier; the figures each scenario measured are printed at the end of the run."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fault._audit import create_namespace
from tests.fault._figures import FIGURES, TOTALS


@pytest.fixture(scope="session")
def app_user(postgres: Any) -> str:
    postgres.create_user("app_user", rds_iam=True)
    return "app_user"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if FIGURES:
        terminalreporter.section("rdsiam: figures measured under faults and load")
        for scenario, text in FIGURES:
            terminalreporter.write_line(f"{scenario}: {text}")
    if TOTALS:
        terminalreporter.write_line("totals: " + ", ".join(f"{n} {what}" for what, n in TOTALS.items()))


@pytest.fixture
def spaces(kube: Any) -> Iterator[Callable[[str], str]]:
    """``spaces(prefix)`` makes a fresh namespace; all are deleted, with their content, at teardown.

    List it before ``operator_factory`` in a test's arguments: fixtures tear down in reverse order, so
    the operators stop and the leak guard reads their Secrets before the namespaces go away.
    """
    made: list[str] = []

    def make(prefix: str = "f") -> str:
        made.append(create_namespace(kube, prefix))
        return made[-1]

    yield make
    for name in made:
        kube.delete_namespace(name)
