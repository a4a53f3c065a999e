# edge-sql-gateway: `gateway serve` on a slim Python base, as a non-root user.
#   docker build -t edge-sql-gateway .
#   docker run -p 8080:8080 -v $PWD/gateway.toml:/etc/gateway/gateway.toml:ro \
#     -e DB_PASSWORD=... -e GATEWAY_DEV_SECRET=... edge-sql-gateway
# The configuration should set [server] host = "0.0.0.0" (or pass --host via CMD).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    GATEWAY_CONFIG=/etc/gateway/gateway.toml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install . \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway

USER gateway
EXPOSE 8080

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["gateway"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
