# Serve a merged tunesmith model (or any transformers model folder) with the OpenAI-compatible API on a GPU.
#
#   tunesmith merge runs/support --out merged/support
#   docker build -t tunesmith-serve .
#   docker run --gpus all -p 127.0.0.1:8000:8000 -v "$PWD/merged/support:/model:ro" \
#       -e TUNESMITH_API_KEY=change-me tunesmith-serve
#
# Arguments after the image name go to `tunesmith serve`, e.g. `... tunesmith-serve --max-batch 32`.
# PyPI's Linux torch wheel carries its own CUDA libraries; the CUDA base image gives the NVIDIA
# container toolkit the OS layer it expects. numpy and pandas as pinned need Python >= 3.11: Ubuntu
# 24.04 has 3.12.
FROM nvidia/cuda:12.8.0-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/tunesmith
COPY pyproject.toml constraints.txt README.md ./
COPY tunesmith ./tunesmith
# The package carries the shipped recipes and demo data (pyproject.toml maps them in): the build needs them.
COPY recipes ./recipes
COPY examples ./examples
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -c constraints.txt ".[serve]"
ENV PATH=/opt/venv/bin:$PATH

RUN useradd --create-home tunesmith
USER tunesmith

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"

# Inside the container the server must listen on all interfaces to be reachable at all;
# who can reach it is decided by how the port is published (-p 127.0.0.1:8000:8000 above).
ENTRYPOINT ["tunesmith", "serve", "/model", "--host", "0.0.0.0", "--port", "8000"]
