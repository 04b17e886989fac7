# clip_service: CLIP key frames and window features (CPU image; clip_service.cuda.Dockerfile for GPUs).
# Build from the repository root: docker build -f docker/clip_service.Dockerfile -t anyanomaly/clip_service .
# Installs only the 'clip' extra, with the same pins as CI (pyproject.toml).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY anyanomaly/__init__.py ./anyanomaly/
COPY anyanomaly/v1 ./anyanomaly/v1
COPY services ./services
# The project pins what must be pinned (torch, grpcio) in pyproject.toml; the rest are ranges, as in CI.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --disable-pip-version-check ".[clip]"

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin anyanomaly
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/models/huggingface
USER 10001
EXPOSE 50051
ENTRYPOINT ["python", "-m", "services.clip_service"]
