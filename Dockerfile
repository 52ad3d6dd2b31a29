# The rdsiam operator image:  docker build -t rdsiam:0.1.0 .
#
# Kept deliberately simple. The real-node test tier builds it with buildah, without a registry, on a
# local Debian base (scripts/build-node-images.sh passes --build-arg BASE_IMAGE=...); users keep the
# default base. tests/integration/test_chart_image.py checks the rest statically: only the `operator`
# extra is installed, pinned by constraints.txt as CI pins it, the user is numeric and non-root (the
# chart's runAsUser), and the entrypoint is `rdsiam run` (the chart passes only its flags).
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# The operator extra's dependencies first, in a layer of their own (a change to the operator's source
# reuses it), at the versions the tests run with.
COPY pyproject.toml constraints.txt ./
RUN python -m venv /opt/rdsiam \
    && python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["operator"], sep="\n")' > operator-requirements.txt \
    && /opt/rdsiam/bin/pip install -c constraints.txt -r operator-requirements.txt
COPY README.md ./
COPY operator/ operator/
RUN /opt/rdsiam/bin/pip install --no-deps -c constraints.txt ".[operator]"

# The proxy sidecar (`rdsiam proxy`): the package alone, no extra, so only Python's standard library.
#   docker build --target proxy -t rdsiam-proxy:0.1.0 .
# Declared before the operator's stage so that a plain `docker build .` still yields the operator image.
FROM ${BASE_IMAGE} AS proxy
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PATH=/opt/rdsiam/bin:$PATH PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/rdsiam && /opt/rdsiam/bin/pip install --no-deps . \
    && /opt/rdsiam/bin/pip uninstall -y pip setuptools \
    && rm -rf /src \
    && groupadd --system --gid 65532 rdsiam \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rdsiam
WORKDIR /
USER 65532:65532
# Clients on 127.0.0.1:5432 (MySQL: 3306) inside the pod; the health port when --health-port sets it.
EXPOSE 9090
ENTRYPOINT ["rdsiam", "proxy"]

FROM ${BASE_IMAGE}
RUN groupadd --system --gid 65532 rdsiam \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rdsiam
COPY --from=build /opt/rdsiam /opt/rdsiam
ENV PATH=/opt/rdsiam/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# Numeric, so that the kubelet can check runAsNonRoot.
USER 65532:65532
# kopf's liveness endpoint (--liveness) and Prometheus metrics (--metrics-port), as the chart sets them.
EXPOSE 8080 9102
ENTRYPOINT ["rdsiam", "run"]
