# clip_service on NVIDIA GPUs: the same install on a CUDA runtime base (torch's wheels bring the
# CUDA libraries; the node's driver comes in through the NVIDIA container runtime).
# Build from the repository root: docker build -f docker/clip_service.cuda.Dockerfile -t anyanomaly/clip_service:cuda .
FROM nvidia/cuda:12.8.1-runtime-ubuntu24.04 AS base
ENV DEBIAN_FRONTEND=noninteractive
# Python 3.12 is what this Ubuntu release ships; its security updates should come with rebuilds.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.12 python3.12-venv \
    && rm -rf /var/lib/apt/lists/*

FROM base AS build
WORKDIR /src
RUN python3.12 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY anyanomaly/__init__.py ./anyanomaly/
COPY anyanomaly/v1 ./anyanomaly/v1
COPY services ./services
# The project pins what must be pinned (torch, grpcio) in pyproject.toml; the rest are ranges, as in CI.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --disable-pip-version-check ".[clip]"

FROM base
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin anyanomaly
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/models/huggingface
USER 10001
EXPOSE 50051
ENTRYPOINT ["python", "-m", "services.clip_service"]
