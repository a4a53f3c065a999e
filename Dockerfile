# edge-sql-gateway: `gateway serve` on a slim Python base, as a non-root user.
#   docker build -t edge-sql-gateway .
#   docker run -p 8080:8080 -v $PWD/gateway.toml:/etc/gateway/gateway.toml:ro \
#     -e DB_PASSWORD=... -e GATEWAY_DEV_SECRET=... edge-sql-gateway
# The gateway listens on every address of the container at the configuration's [server] port
# (8080 unless set); the health check reads the same configuration, so it follows that port.
#
# python:3.11-slim (Python 3.11.15 on Debian trixie), pinned by the digest of its multi-platform
# index as docker-library/repo-info records it (repos/python/remote/3.11-slim.md). To move to a
# newer build: docker buildx imagetools inspect python:3.11-slim, and replace the digest.
ARG PYTHON_IMAGE=python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff

# Build: wheels of the gateway, its client and every runtime dependency. No extra is asked
# for, so neither the embedded PostgreSQL (`embedded`) nor the test tools (`dev`) are built.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY LICENSE README.md pyproject.toml ./
COPY gateway ./gateway
COPY clients/python ./clients/python
RUN pip wheel --no-cache-dir --wheel-dir /wheels ./clients/python .

# Runtime: those wheels only (no index, no compiler, no sources), as an unprivileged user. The
# wheels are mounted for the install, not copied into a layer (BuildKit, Docker's default builder).
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.toml
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels edge-sql-gateway \
    && groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home --shell /usr/sbin/nologin gateway

# By number, so a platform can verify it is not root (Kubernetes' runAsNonRoot).
USER 10001:10001
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-m", "gateway.healthcheck"]

ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0"]
