# authz sidecar image: `make image` (needs a container engine).
# Multi-stage: wheels are built with the toolchain, the runtime image has none of it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY authz ./authz
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[demo]"

FROM python:3.11-slim
# Non-root, no shell tricks needed at runtime; the root filesystem can be mounted read-only:
# the only writes go to /var/lib/authz (audit files, an emptyDir or volume) and /tmp.
RUN groupadd --system --gid 10001 authz && useradd --system --uid 10001 --gid authz --no-create-home authz \
    && mkdir -p /var/lib/authz/audit /etc/authz && chown -R authz:authz /var/lib/authz
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels authz[demo] && rm -rf /wheels
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 AUTHZ_AUDIT_DIR=/var/lib/authz/audit
USER 10001:10001
EXPOSE 9001 9002
HEALTHCHECK --interval=10s --timeout=2s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9002/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["authz"]
CMD ["serve", "--config", "/etc/authz/authz.yaml"]
