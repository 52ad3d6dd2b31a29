"""The operator image (Dockerfile) and the chart agree. The image is not built here (no container
engine where the tests run), so this checks what can be checked statically."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from rdsiam.testing import helm

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_image_installs_only_the_operator_extra() -> None:
    installs = [args for op, args in instructions() if op == "RUN" and "pip install" in args]
    assert len(installs) == 1
    assert re.search(r"""pip install ["']?\.\[operator\]["']?$""", installs[0]), installs[0]
    copied = [args for op, args in instructions() if op == "COPY" and "--from" not in args]
    assert all(not re.search(r"\btests?\b|examples|charts|benchmarks", c) for c in copied), copied
    bases = [args for op, args in instructions() if op == "FROM"]
    assert bases and all(re.match(r"python:\$\{PYTHON_VERSION\}-slim", b) for b in bases), bases
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!operator/"]


def test_image_runs_rdsiam_run_as_the_charts_non_root_user() -> None:
    users = [args for op, args in instructions() if op == "USER"]
    assert users, "the image must set a USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "USER must be numeric (runAsNonRoot) and not root"
    entrypoint = next(args for op, args in instructions() if op == "ENTRYPOINT")
    assert json.loads(entrypoint) == ["rdsiam", "run"]
    values = yaml.safe_load((ROOT / "charts" / "rdsiam" / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == int(uid)
    assert values["podSecurityContext"]["runAsGroup"] == int(gid or uid)
    deployment = next(o for o in helm.objects(helm.render(ROOT / "charts" / "rdsiam")) if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"][0].startswith("--")  # flags of the entrypoint
    exposed = {int(p) for op, args in instructions() if op == "EXPOSE" for p in args.split()}
    assert {p["containerPort"] for p in container["ports"]} <= exposed
