# amdim-coordinator (job queue, membership, rendezvous, checkpoint registry)
# and amdimctl, on Debian bookworm slim. No ML libraries: the coordinator
# never links burn (docs/architecture.md §2).
#
# The binaries are built on the host and copied in from a prepared context
# (docker/build.sh assembles target/docker-context/coordinator/bin/):
#   cargo build --release -p amdim-coordinator -p amdim-worker
#   docker/build.sh coordinator
#
# Runs as uid/gid 10001 with a read-only root filesystem (the Helm chart's
# securityContext); the state store lives in /var/lib/amdim, mount a volume
# there.

ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive

# ca-certificates: rustls reads the system roots for S3 over TLS.
# tini: PID 1 that forwards signals to the process and reaps children.
# Versions are not pinned: the base is Debian stable and takes its
# security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 amdim \
    && useradd --system --uid 10001 --gid amdim --home-dir /var/lib/amdim \
        --no-create-home --shell /usr/sbin/nologin amdim \
    && install -d -o amdim -g amdim -m 0750 /var/lib/amdim

COPY bin/amdim-coordinator bin/amdimctl /usr/local/bin/

LABEL org.opencontainers.image.title="amdim-coordinator" \
      org.opencontainers.image.description="AMDIM training service: coordinator and amdimctl" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
WORKDIR /var/lib/amdim
ENV AMDIM_STORE=/var/lib/amdim/coordinator.db

# gRPC (amdimctl, workers) and HTTP (/healthz, /readyz, /metrics).
EXPOSE 7070 9464

# `docker stop` and Kubernetes send SIGTERM: the coordinator shuts down
# cleanly on it (state already on disk); tini forwards it.
ENTRYPOINT ["/usr/bin/tini", "--", "amdim-coordinator"]
