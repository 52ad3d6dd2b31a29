"""The operator image (Dockerfile) and the chart agree. The image is built only by the real-node tier
(scripts/build-node-images.sh, with buildah); this checks statically what holds for every build."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests import _helm as helm

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def all_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions by name (the unnamed last one, the default build, is "")."""
    out: dict[str, list[tuple[str, str]]] = {}
    name = "<preamble>"
    for op, args in all_instructions():
        if op == "FROM":
            name = args.partition(" AS ")[2].strip()
        out.setdefault(name, []).append((op, args))
    return out


def instructions() -> list[tuple[str, str]]:
    """The operator image's instructions: every stage but the proxy's (`docker build --target proxy`)."""
    return [step for name, steps in stages().items() if name != "proxy" for step in steps]


def test_image_installs_only_the_operator_extra_pinned_by_the_constraints() -> None:
    steps = instructions()
    installs = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args]
    # Two installs: the operator extra's dependencies alone (a layer that source changes reuse), then the
    # package without dependencies. Both pinned by constraints.txt, as CI installs.
    assert len(installs) == 2, [steps[i] for i in installs]
    deps, package = (steps[i][1] for i in installs)
    assert re.search(r"pip install -c constraints\.txt -r operator-requirements\.txt$", deps), deps
    assert re.search(r"""pip install --no-deps -c constraints\.txt ["']?\.\[operator\]["']?$""", package), package
    # The requirement list is computed from pyproject's operator extra, exactly.
    lister = re.search(r"python -c '([^']*)' > operator-requirements\.txt", deps)
    assert lister, deps
    listed = subprocess.run([sys.executable, "-c", lister[1]], cwd=ROOT, capture_output=True, text=True, check=True)
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["operator"]
    assert listed.stdout.splitlines() == extra
    copies = {args: i for i, (op, args) in enumerate(steps) if op == "COPY" and "--from" not in args}
    assert copies["pyproject.toml constraints.txt ./"] < installs[0] < copies["operator/ operator/"] < installs[1]
    assert all(not re.search(r"\btests?\b|examples|charts|benchmarks", c) for c in copies), copies
    args = [args for op, args in steps if op == "ARG"]
    assert args == ["BASE_IMAGE=python:3.12-slim"], args  # users build with the default; no other knob
    bases = [args for op, args in steps if op == "FROM"]
    assert bases == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"], bases
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1 :][:4] == ["!pyproject.toml", "!constraints.txt", "!README.md", "!operator/"]


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


def test_chart_runs_the_images_entrypoint_on_exposed_ports() -> None:
    deployment = next(o for o in helm.template() if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert "command" not in container and container["args"][0].startswith("--")  # flags of the entrypoint
    exposed = {int(p) for op, args in instructions() if op == "EXPOSE" for p in args.split()}
    assert {p["containerPort"] for p in container["ports"]} <= exposed


def test_the_proxy_stage_installs_rdsiam_alone_and_runs_rdsiam_proxy_as_non_root() -> None:
    steps = stages()
    assert list(steps)[-1] == "", "the operator's stage must stay the last: `docker build .` builds it"
    proxy = steps["proxy"]
    installs = [args for op, args in proxy if op == "RUN" and "pip install" in args]
    assert len(installs) == 1 and re.search(r"pip install --no-deps \. ", installs[0]), installs  # no extra
    assert not any("--from" in args for op, args in proxy if op == "COPY")
    uid, _, gid = next(args for op, args in reversed(proxy) if op == "USER").partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    assert json.loads(next(args for op, args in proxy if op == "ENTRYPOINT")) == ["rdsiam", "proxy"]
