# amdim-worker, CPU build (burn's flex backend, TCP collectives), plus
# amdimctl for dataset packing and checkpoint listings, on Debian bookworm
# slim.
#
# The binaries are built on the host and copied in from a prepared context
# (docker/build.sh assembles target/docker-context/worker/bin/):
#   cargo build --release -p amdim-coordinator -p amdim-worker
#   docker/build.sh worker
#
# Runs as uid/gid 10001 with a read-only root filesystem (the Helm chart's
# securityContext). Checkpoints go to the job's checkpoint URI: an object
# store, or a mounted folder writable by uid 10001.
#
# The release build targets x86-64-v4 kernels (burn-flex `x86-v4`): the host
# must have AVX-512.

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

COPY bin/amdim-worker bin/amdimctl /usr/local/bin/

LABEL org.opencontainers.image.title="amdim-worker" \
      org.opencontainers.image.description="AMDIM training service: CPU worker agent" \
      org.opencontainers.image.licenses="Apache-2.0"

USER 10001:10001
WORKDIR /var/lib/amdim

# HTTP /metrics, /healthz, /readyz when started with --metrics-listen
# 0.0.0.0:9465 (the Helm chart's port). Collective ports are ephemeral.
EXPOSE 9465

# `docker stop` and Kubernetes send SIGTERM: the binaries stop cleanly on it
# (a worker ends its part with a checkpoint first); tini forwards it.
ENTRYPOINT ["/usr/bin/tini", "--", "amdim-worker"]
CMD ["agent", "--help"]
