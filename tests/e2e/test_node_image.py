"""What the images the node runs contain: the operator image holds the operator and the in-pod library,
the app image the in-pod library, the proxy image the in-pod library alone (no third-party package), and
none anything of the test support (``rdsiam-testing``) or what only tests need. Read from the
docker-archive tarballs scripts/build-node-images.sh wrote."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest

from ._node import image_dir
from .conftest import on_node

TEST_ONLY = {"rdsiam_testing", "moto", "kmock", "pytest", "jsonschema", "cel_python", "werkzeug", "flask"}


def image_files(tarball: Path) -> set[str]:
    """The paths of the regular files of the image's filesystem (whiteouts applied)."""
    files: set[str] = set()
    with tarfile.open(tarball) as archive:
        manifest = json.load(archive.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=archive.extractfile(layer)) as entries:
                for entry in entries:
                    directory, _, name = entry.name.rpartition("/")
                    if name.startswith(".wh."):
                        gone = f"{directory}/{name[4:]}".lstrip("/")
                        files = {f for f in files if f != gone and not f.startswith(gone + "/")}
                    elif entry.isfile():
                        files.add(entry.name)
    return files


def distributions(files: set[str]) -> set[str]:
    return {re.sub(r"-[^-/]+\.dist-info/.*$", "", f.split("site-packages/", 1)[1]).lower()
            for f in files if "site-packages/" in f and ".dist-info/" in f}


@on_node
@pytest.mark.parametrize(("image", "must_have"), [
    ("rdsiam.tar", {"rdsiam/operator/handlers.py", "rdsiam/_mounted.py"}),
    ("app.tar", {"rdsiam/_mounted.py", "rdsiam/integrations/psycopg.py"}),
])
def test_the_images_hold_no_test_support(image: str, must_have: set[str]) -> None:
    files = image_files(image_dir() / image)
    ours = {f.split("site-packages/", 1)[1] for f in files if "site-packages/rdsiam/" in f}
    assert must_have <= ours
    assert sorted(f for f in ours if f.startswith("rdsiam/testing/")) == []
    installed = distributions(files)
    assert "rdsiam" in installed and sorted(installed & TEST_ONLY) == []


@on_node
def test_the_proxy_image_holds_rdsiam_and_the_standard_library_only() -> None:
    tarball = image_dir() / "proxy.tar"
    files = image_files(tarball)
    assert "rdsiam/_proxy.py" in {f.split("site-packages/", 1)[1] for f in files if "site-packages/" in f}
    installed = distributions(files)
    assert sorted(installed) == ["rdsiam"], sorted(installed)  # no pip, boto3, kopf, pydantic, jinja2
    print(f"proxy image: {tarball.stat().st_size / 1e6:.1f} MB, {len(files)} files")
