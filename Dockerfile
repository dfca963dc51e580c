# authz sidecar image. Build: `make image IMAGE=registry.example.com/authz:0.1.0` (needs docker
# or podman with a running engine), then push it and put its name in deploy/k8s/base/settings.env.
#
# Two stages: the first installs the package and its pinned dependencies (requirements.lock, the
# same pins `make venv` uses) into a virtualenv, the second copies only that virtualenv onto a
# clean slim base, so pip caches, wheels and build tools never reach a layer of the final image.
#
# Runtime contract (deploy/k8s relies on it; tests/unit/deploy/test_image.py checks it):
#   - runs as uid/gid 10001, never root;
#   - writes nothing outside /var/lib/authz (audit files: mount an emptyDir or a volume) and
#     /tmp, so the root filesystem can be mounted read-only; bytecode is compiled at build time;
#   - `authz serve --config /etc/authz/policy/authz.yaml` by default: the production policy
#     (deploy/k8s/base/authz.yaml, no demo settings, no debug headers, no keys). It starts only
#     when given what it names: AUTHZ_ISSUER, AUTHZ_RESOURCE, AUTHZ_REDACTION_KEY and the two
#     key files under /etc/authz/keys (`authz keygen`); otherwise it exits 2 saying which are
#     missing. Mount your policy over /etc/authz/policy, or pass --config;
#   - the `otel` extra is installed: tracing.otlp_endpoint works without another image;
#   - gRPC (ext_authz + ext_proc) on 9001, HTTP (/healthz, /readyz, /metrics, JWKS) on 9002;
#   - the same image runs the demo MCP server: `python -m authz.dev.mcp_server`.
#
# The base image is pinned by digest, so a rebuild gets the same bytes. To move to a newer
# patch release: `docker buildx imagetools inspect python:3.11-slim-bookworm` and replace the
# digest (or pass --build-arg PYTHON_IMAGE=...).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/authz
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY authz ./authz
# Not editable: the package is copied into site-packages and compiled to bytecode there.
# xds-protos ships an old copy of opentelemetry's protos in the same files as opentelemetry-proto:
# the latter must be written last or the OTLP exporter cannot start (see the Makefile).
RUN /opt/authz/bin/pip install -c requirements.lock ".[demo,otel]" \
    && /opt/authz/bin/pip install --force-reinstall --no-deps "$(grep '^opentelemetry-proto==' requirements.lock)" \
    && /opt/authz/bin/python -m compileall -q /opt/authz/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="authz" \
      org.opencontainers.image.description="Envoy ext_authz / ext_proc sidecar for LLM and MCP traffic" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 authz \
    && useradd --system --uid 10001 --gid authz --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin authz \
    && mkdir -p /var/lib/authz/audit /etc/authz/policy /etc/authz/keys \
    && chown -R 10001:10001 /var/lib/authz
COPY --from=build /opt/authz /opt/authz
COPY deploy/k8s/base/authz.yaml /etc/authz/policy/authz.yaml
ENV PATH=/opt/authz/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    AUTHZ_AUDIT_DIR=/var/lib/authz/audit
USER 10001:10001
WORKDIR /var/lib/authz
VOLUME ["/var/lib/authz/audit"]
EXPOSE 9001 9002
# Liveness only (the event loop answers). Kubernetes ignores HEALTHCHECK and uses the probes in
# deploy/k8s; this one serves `docker run` and compose. No curl in the image: Python does it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9002/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["authz"]
CMD ["serve", "--config", "/etc/authz/policy/authz.yaml"]
