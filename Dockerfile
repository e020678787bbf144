# FairDx app image for a CPU or a GPU host (also usable as a Docker Space, with app_port 7860).
#
#   docker build -t fairdx .                                   # CPU: torch's CPU wheel, small image
#   docker run -p 7860:7860 -v fairdx-runs:/home/user/app/runs fairdx
#
# GPU host: PyTorch's CUDA wheels bundle the CUDA runtime, so the base image stays the same; take
# torch from an index with CUDA builds and run with the NVIDIA container toolkit (host: driver only):
#
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t fairdx:gpu .
#   docker run --gpus all -p 7860:7860 -v fairdx-runs:/home/user/app/runs fairdx:gpu
#
# (PyPI's Linux torch wheel is a CUDA build; https://download.pytorch.org/whl/cuXYZ picks a given
# CUDA version, if pytorch.org lists one for the pinned torch.)
#
# BASE_IMAGE may name another base, e.g. a CUDA image, only if it already provides `python` 3.11
# with pip and `useradd` on PATH. The stock nvidia/cuda:12.x-runtime-ubuntu22.04 has no Python
# (and Ubuntu 22.04's own python3 is 3.10), so use an image derived from it that installs
# Python 3.11 and links it as `python`; with the default base none of this is needed.
#
# No secret is baked in: pass HF_TOKEN at run time (docker run -e HF_TOKEN) only when you push runs.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# Hugging Face Spaces run containers as user id 1000; so does this image.
RUN useradd --create-home --uid 1000 user \
    && mkdir -p /home/user/app/runs /home/user/app/data \
    && chown -R 1000:1000 /home/user/app
USER 1000

ENV HOME=/home/user \
    PATH=/home/user/.local/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    GRADIO_ANALYTICS_ENABLED=False \
    GRADIO_TEMP_DIR=/tmp/gradio \
    FAIRDX_RUNS_DIR=/home/user/app/runs \
    FAIRDX_DATA_DIR=/home/user/app/data
WORKDIR /home/user/app

# torch first, from the chosen wheel index, at the version requirements.txt pins; then the rest.
COPY --chown=1000:1000 requirements.txt ./
RUN pip install --no-cache-dir --user --index-url "${TORCH_INDEX_URL}" "$(grep '^torch==' requirements.txt)" \
    && pip install --no-cache-dir --user -r requirements.txt

COPY --chown=1000:1000 . .

# Trained runs outlive the container: mount a volume here (the app lists and writes runs in it).
VOLUME ["/home/user/app/runs"]
EXPOSE 7860
CMD ["python", "app.py"]
