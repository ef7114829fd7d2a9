# syntax=docker/dockerfile:1
# livediff on an NVIDIA GPU, with the TensorRT extra. Default command: the browser UI on port 7860;
# every other command works too (the image's entry point is `livediff`).
#
#   docker build -t livediff .
#   docker run --gpus all -p 7860:7860 -v livediff-cache:/cache livediff
#   docker run --gpus all -v livediff-cache:/cache -v "$PWD:/data" livediff video /data/in.mp4 -o /data/out.mp4
#
# /cache holds the Hugging Face downloads (HF_HOME) and the exported ONNX graphs / TensorRT engines
# (LIVEDIFF_CACHE_DIR), so weights are fetched and engines are built once per volume, not per container.
# One CUDA line: CUDA 12.8. The torch and tensorrt wheels bring their own CUDA 12 libraries, pinned in
# docker/constraints.txt (torch 2.10.0: the newest torch whose PyPI wheel is built for CUDA 12); the base
# image supplies the CUDA environment the NVIDIA container toolkit expects. The host driver must support
# CUDA 12.8 (driver 570 or newer). .ci/check_docker_cuda.py checks that the pins and this base agree.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/cache/huggingface \
    LIVEDIFF_CACHE_DIR=/cache/engines \
    GRADIO_ANALYTICS_ENABLED=False

# python3 is 3.10 on 22.04 (livediff needs >= 3.10); libglib2.0-0 is what OpenCV's wheel expects; Triton
# (torch.compile, `--accelerator compile`) compiles a small C launcher when it starts: gcc and Python's headers.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/livediff
COPY pyproject.toml README.md ./
COPY docker/constraints.txt ./docker/constraints.txt
COPY livediff ./livediff
COPY app ./app
COPY pipelines ./pipelines
COPY accelerators ./accelerators
COPY assets ./assets
# the project itself: dependency ranges live in pyproject.toml, the CUDA line's pins in docker/constraints.txt
# hadolint ignore=DL3013
RUN pip install -c docker/constraints.txt ".[tensorrt]"

RUN useradd --create-home --uid 1000 livediff \
 && mkdir -p /cache/huggingface /cache/engines \
 && chown -R livediff /cache
USER 1000
VOLUME ["/cache"]
EXPOSE 7860
ENTRYPOINT ["livediff"]
CMD ["ui", "--host", "0.0.0.0", "--port", "7860"]
