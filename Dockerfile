# Seawall as a container: the sidecar next to a trading bot
# (deploy/ and README.md, "Running next to a bot").
#
#   docker build -t seawall:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 seawall:0.1.0                 # the shipped default config
#   docker run --rm -v "$PWD/my.yaml:/etc/seawall/seawall.yaml:ro" \
#       -e SEAWALL_CONFIG=/etc/seawall/seawall.yaml seawall:0.1.0              # your own config file
#
# The shipped config (config/: default.yaml, the orderly and woox profiles, the error table) is baked into
# the wheel as proxy/_shipped_config; a mounted file named by SEAWALL_CONFIG replaces default.yaml and
# still picks its profile from the baked ones. Environment overrides (SEAWALL_PROFILE, SEAWALL_UPSTREAM,
# SEAWALL_LISTEN, SEAWALL_ADMIN_LISTEN, SEAWALL_REDIS_URL, SEAWALL_LOG_LEVEL) win over any file.

# --- build: the wheel and a self-contained virtualenv; no build tools reach the final image ----------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the wheel is built from (pyproject's `readme` needs README.md), so edits elsewhere keep the
# layer cache.
COPY pyproject.toml README.md ./
COPY config/ config/
COPY proxy/ proxy/

# The venv is copied whole into the final stage; its python links to the same /usr/local/bin/python3.11.
# `seawall --version` fails the build here if the wheel lacks a module or its shipped config.
RUN python -m pip wheel --no-deps --wheel-dir /dist . \
    && python -m venv /opt/seawall \
    && /opt/seawall/bin/pip install /dist/seawall-*.whl \
    && /opt/seawall/bin/seawall --version \
    && /opt/seawall/bin/seawall check-config \
       "$(/opt/seawall/bin/python -c 'import proxy.shipped as s; print(s.default_config_path())')" >/dev/null

# --- runtime ---------------------------------------------------------------------------------------
FROM python:3.11-slim

LABEL org.opencontainers.image.title="seawall" \
      org.opencontainers.image.description="Resilient sidecar reverse proxy for trading bots (Orderly Network, WOO X)" \
      org.opencontainers.image.licenses="MIT"

# A numeric, non-root user: Kubernetes' runAsNonRoot can only verify a numeric UID.
RUN groupadd --system --gid 10001 seawall \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin seawall

COPY --from=build /opt/seawall /opt/seawall

# In a container both listeners must accept connections from outside the container's loopback (the
# bot's container, Prometheus, the kubelet's probes). In a Kubernetes pod, set SEAWALL_LISTEN back to
# 127.0.0.1:8080 so only the bot in the same pod reaches the proxy (deploy/kubernetes/).
# Bytecode was compiled at install time; a read-only root filesystem must not be written to.
ENV PATH=/opt/seawall/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEAWALL_LISTEN=0.0.0.0:8080 \
    SEAWALL_ADMIN_LISTEN=0.0.0.0:9090

USER 10001:10001
EXPOSE 8080 9090

# A slim image has no curl: ask /healthz with the standard library, on the admin port that
# SEAWALL_ADMIN_LISTEN names (a wildcard host is reached on loopback). urlopen raises on a refused
# connection, a timeout or a non-2xx status, so python exits 1 = unhealthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; h, _, p = os.environ.get('SEAWALL_ADMIN_LISTEN', '0.0.0.0:9090').rpartition(':'); h = h.strip('[]'); h = '127.0.0.1' if h in ('', '0.0.0.0', '::') else h; h = '[' + h + ']' if ':' in h else h; urllib.request.urlopen('http://' + h + ':' + p + '/healthz', timeout=4)"]

# Exec form: seawall is PID 1 and receives SIGTERM itself, then drains in-flight requests
# (server.shutdown_timeout, 15 s by default) before it exits; give it that long (docker stop -t 20,
# Kubernetes terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["seawall"]
CMD ["run"]
