# wavalign-ray for GPU clusters: CUDA 13.0, Python 3.11, the project and its pinned stack (the CUDA build
# of vllm 0.32.0), with `ray` as the command for head and worker nodes.
#
# NOT BUILT YET: the machines this project is developed on have no Docker engine (and no GPU).
# tests/unit/test_dockerfile.py checks what can be checked without one: the pins below equal
# pyproject.toml's, every path copied in exists, and the base is a CUDA image.
#
#   build:   docker build -t wavalign-ray:gpu .
#   head:    docker run -d --name ray-head --gpus all --network host --shm-size=32g wavalign-ray:gpu
#   token:   export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=$(docker exec ray-head ray get-auth-token)
#   worker:  docker run -d --gpus all --network host --shm-size=32g -e RAY_AUTH_TOKEN wavalign-ray:gpu \
#                ray start --block --address=<head-ip>:6379
#   job:     ray job submit --address http://<head-ip>:8265 -- python launch.py --config pipeline.yaml --set ...
# (README "GPU clusters (Docker image)" has the details.)

# CUDA 13.0 because the PyPI wheels of torch 2.13.0 (cuda-toolkit 13.0.3, nccl-cu13) and vllm 0.32.0
# (cu13 kernels) are built for it; hosts need an NVIDIA driver that runs CUDA 13.0 (>= 580).
# devel, not runtime: nvcc for the kernels that FlashInfer and DeepSpeed compile on first use.
FROM nvidia/cuda:13.0.0-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Python 3.11 (pyproject: >=3.11,<3.12) from the deadsnakes PPA; git and curl for Ray's runtime envs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates curl git \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH

# The stack, pinned together (the same versions as pyproject.toml; a unit test compares them):
# vllm 0.32.0 requires torch 2.13.0 exactly, so torch moves only with vllm.
ARG TORCH_VERSION=2.13.0
# vllm: the one version whose public weight-transfer API (WeightTransferConfig) the GPU path is written against.
ARG VLLM_VERSION=0.32.0
# ray: the release the pipeline's workers, job submission and token auth were verified with beside vllm 0.32.0.
ARG RAY_VERSION=2.60.0
# deepspeed: the release verified with torch 2.13.0 (ZeRO 0-3 with torch's AdamW, no compiled ops).
ARG DEEPSPEED_VERSION=0.19.8
# transformers: inside vllm 0.32.0's range (>=5.16.1,<5.20.0) and the release the learner was verified with.
ARG TRANSFORMERS_VERSION=5.19.0

# A layer of its own, so that editing the project does not reinstall the stack.
RUN pip install --upgrade pip \
 && pip install "torch==${TORCH_VERSION}" \
 && pip install "vllm==${VLLM_VERSION}" "ray[default,data]==${RAY_VERSION}" "deepspeed==${DEEPSPEED_VERSION}" \
        "transformers==${TRANSFORMERS_VERSION}"

WORKDIR /opt/wavalign
# The project (.dockerignore leaves out .venv, .assets, runs, .git); `[gpu]` resolves to the pins above,
# `[test]` lets tests/gpu run inside the image.
COPY . .
RUN pip install -e ".[gpu,test]" \
 && python -c "import transformers.models.qwen2.modeling_qwen2, vllm, ray, deepspeed, torch; \
assert torch.__version__.startswith('${TORCH_VERSION}') and torch.version.cuda.startswith('13.'), torch.__version__"

# /dev/shm (docker run --shm-size) backs Ray's object store and rollout.weight_staging_dir.
# Token authentication is on for every Ray process of the image: the dashboard listens on every
# interface, and without a token anyone who reaches port 8265 could submit jobs. The head makes its
# token (~/.ray/auth_token in the container) on first start; workers and submitters pass the same
# one in RAY_AUTH_TOKEN (README "GPU clusters").
ENV RAY_AUTH_MODE=token
# No ENTRYPOINT: the command is `ray start ...` on head and worker nodes, or any other command.
EXPOSE 6379 8265 10001
CMD ["bash", "-c", "ray get-auth-token --generate > /dev/null && exec ray start --head --block --port=6379 --dashboard-host=0.0.0.0"]
