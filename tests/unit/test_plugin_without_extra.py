"""The pytest11 entry point is registered whenever rdsiam is installed, also without the ``testing`` extra:
an app's test suite must then start as if the plugin were not there."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A child where the testing extra's dependencies cannot be imported, as in an app's environment that
# installs only the in-pod library.
CHILD = textwrap.dedent("""
    import importlib.abc, sys

    class NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in {"yaml", "moto", "kmock", "jsonschema", "jwt", "cryptography"}:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NotInstalled())
    import rdsiam.testing.plugin as plugin
    print("fixtures:", sorted(n for n in ("kube", "sts", "postgres", "rds", "operator") if hasattr(plugin, n)))
""")


def test_the_plugin_offers_nothing_and_fails_nothing_without_the_testing_extra() -> None:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "fixtures: []"


def test_with_the_extra_the_plugin_offers_the_fixtures() -> None:
    import rdsiam.testing.plugin as plugin

    assert all(hasattr(plugin, name) for name in ("kube", "sts", "postgres", "rds", "operator"))
