# Stub image (CPU): the project with its pinned stack. The GPU image (CUDA base, vllm==0.32.0,
# ray as entrypoint for head and worker nodes) comes with the GPU-path issue.
FROM python:3.11-slim
WORKDIR /opt/wavalign
COPY . .
RUN bash scripts/install.sh cpu
ENV PATH=/opt/wavalign/.venv/bin:$PATH
CMD ["python", "launch.py", "--config", "pipeline.yaml"]
