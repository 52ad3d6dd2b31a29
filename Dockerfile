# The rdsiam operator image:  docker build -t rdsiam:0.1.0 .
#
# Kept deliberately simple. It is not built by the test suite (there is no container engine where the
# tests run); tests/integration/test_chart_image.py checks what can be checked without building it: only
# the `operator` extra is installed, the user is numeric and non-root (the chart's runAsUser), and the
# entrypoint is `rdsiam run` (the chart passes only its flags).
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN python -m venv /opt/rdsiam && /opt/rdsiam/bin/pip install ".[operator]"

FROM python:${PYTHON_VERSION}-slim
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
