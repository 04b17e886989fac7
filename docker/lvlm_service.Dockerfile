# lvlm_service: the LVLM scoring front; in the LVLM pod it runs beside the stock vLLM OpenAI server (openai backend on localhost).
# Build from the repository root: docker build -f docker/lvlm_service.Dockerfile -t anyanomaly/lvlm_service .
# Installs only the 'lvlm' extra, with the same pins as CI (pyproject.toml); the dev-cpu overlay's
# image (the tiny local model, no vLLM) is built with --build-arg EXTRA=lvlm-transformers.
FROM python:3.11-slim-bookworm AS build
ARG EXTRA=lvlm
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY pyproject.toml README.md ./
COPY anyanomaly/__init__.py ./anyanomaly/
COPY anyanomaly/v1 ./anyanomaly/v1
COPY services ./services
# The project pins what must be pinned (torch, grpcio) in pyproject.toml; the rest are ranges, as in CI.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --disable-pip-version-check ".[${EXTRA}]"

FROM python:3.11-slim-bookworm
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin anyanomaly
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HF_HOME=/models/huggingface
USER 10001
EXPOSE 50053
ENTRYPOINT ["python", "-m", "services.lvlm_service"]
