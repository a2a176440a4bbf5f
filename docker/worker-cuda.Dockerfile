# amdim-worker built with `--features cuda` (burn's CUDA backend through
# cubecl, NCCL collectives through cudarc), plus amdimctl, on NVIDIA's CUDA
# runtime image.
#
# The binary is built on the host and copied in from a prepared context
# (docker/build.sh assembles target/docker-context/worker-cuda/bin/):
#   cargo build --release -p amdim-coordinator
#   cargo build --release -p amdim-worker --features cuda --target-dir target/cuda
#   docker/build.sh worker-cuda
#
# What the binary needs at run time, all loaded with dlopen:
# - libcuda.so.1: the driver's, mounted by the NVIDIA container toolkit
#   (`docker run --gpus all`, or the device plugin's nvidia.com/gpu).
# - libnvrtc.so.12: in the runtime image. cubecl compiles its kernels at run
#   time with NVRTC and passes --include-path=$CUDA_PATH/include, and the
#   generated sources include cuda_runtime.h, cuda_fp16.h, cuda_bf16.h, mma.h
#   and CCCL's cuda/* headers: the runtime image has no headers, so the
#   header packages are added below.
# - NCCL: the runtime image ships libnccl2 (libnccl.so.2). cudarc looks for
#   libnccl.so, libnccl.so.12, .11, … but never libnccl.so.2, and the
#   unversioned name only comes with libnccl-dev (static library included),
#   so a libnccl.so link is made here instead.
#
# glibc: the host builds on Debian 12 (glibc 2.36); the base must have glibc
# >= 2.36 (Ubuntu 24.04 has 2.39; Ubuntu 22.04's 2.35 is too old).
#
# Runs as uid/gid 10001 with a read-only root filesystem (the Helm chart's
# securityContext).

ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
FROM ${BASE_IMAGE}
ARG BASE_IMAGE

# CUDA major-minor of the base image, as in NVIDIA's package names.
ARG CUDA_PKG_VERSION=12-8
ARG DEBIAN_FRONTEND=noninteractive

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# ca-certificates: rustls reads the system roots for S3 over TLS.
# tini: PID 1 that forwards signals to the process and reaps children.
# cuda-cudart-dev, cuda-crt, cuda-cccl: the headers NVRTC compiles against
# (from NVIDIA's apt repository, already configured in the base image).
# Versions follow the base image's CUDA release through CUDA_PKG_VERSION.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        ca-certificates tini \
        "cuda-cudart-dev-${CUDA_PKG_VERSION}" \
        "cuda-crt-${CUDA_PKG_VERSION}" \
        "cuda-cccl-${CUDA_PKG_VERSION}" \
    && rm -rf /var/lib/apt/lists/* \
    && nccl="$(ldconfig -p | awk '$1 == "libnccl.so.2" { print $NF; exit }')" \
    && if [ -z "${nccl}" ]; then echo "no libnccl.so.2 in ${BASE_IMAGE}: use a CUDA runtime image" >&2; exit 1; fi \
    && ln -sf "${nccl}" "$(dirname "${nccl}")/libnccl.so" \
    && ldconfig \
    && for h in cuda_runtime.h cuda_fp16.h cuda_bf16.h mma.h crt/host_config.h cuda/barrier; do \
        if [ ! -e "/usr/local/cuda/include/${h}" ]; then echo "missing CUDA header ${h}" >&2; exit 1; fi; \
    done \
    && groupadd --system --gid 10001 amdim \
    && useradd --system --uid 10001 --gid amdim --home-dir /var/lib/amdim \
        --no-create-home --shell /usr/sbin/nologin amdim \
    && install -d -o amdim -g amdim -m 0750 /var/lib/amdim

COPY bin/amdim-worker bin/amdimctl /usr/local/bin/

LABEL org.opencontainers.image.title="amdim-worker-cuda" \
      org.opencontainers.image.description="AMDIM training service: CUDA worker agent (NCCL collectives)" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV CUDA_PATH=/usr/local/cuda \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER 10001:10001
WORKDIR /var/lib/amdim

# HTTP /metrics, /healthz, /readyz when started with --metrics-listen
# 0.0.0.0:9465 (the Helm chart's port). Collective ports are ephemeral.
EXPOSE 9465

# `docker stop` and Kubernetes send SIGTERM: the binaries stop cleanly on it
# (a worker ends its part with a checkpoint first); tini forwards it.
ENTRYPOINT ["/usr/bin/tini", "--", "amdim-worker"]
CMD ["agent", "--help"]
