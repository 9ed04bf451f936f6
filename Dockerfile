# syntax=docker/dockerfile:1
#
# maskrt images. Two targets:
#
#   gpu (default)  TensorRT backend on an NVIDIA GPU:  docker build --target gpu -t maskrt:gpu .
#   cpu            ONNX Runtime backend, any machine:  docker build --target cpu -t maskrt:cpu .
#
# docker-compose.yml builds `gpu`, docker-compose.cpu.yml switches to `cpu`. README.md ("Deploy with Docker") says
# what the host needs and which of these steps were run outside Docker.
#
# GPU base: NVIDIA's TensorRT NGC image 25.12 = Ubuntu 24.04, Python 3.12, TensorRT 10.14.1 with
# its C++ headers and Python bindings (in the system Python), CUDA 13.x with nvcc. Its CUDA 13
# needs an R580 or newer driver on the host, as do the CUDA 13 (cu130) torch wheels from PyPI.
ARG TENSORRT_IMAGE=nvcr.io/nvidia/tensorrt:25.12-py3
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --------------------------------------------------------------------------------------------------
# wheel: the maskrt package as a pure-Python wheel (the plugin's C++ sources ride along as package
# data; the GPU stage compiles them with CMake).
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY maskrt/ maskrt/
COPY model/ model/
COPY export/ export/
COPY plugins/ plugins/
COPY runtime/ runtime/
COPY server/ server/
COPY bench/ bench/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels . \
    && mkdir -p /opt/maskrt \
    && sha256sum /wheels/maskrt-*.whl | cut -c1-12 > /opt/maskrt/build-id

# --------------------------------------------------------------------------------------------------
# cpu: python:3.12-slim with the ONNX Runtime backend.
FROM ${PYTHON_IMAGE} AS cpu-build
COPY --from=wheel /wheels/ /wheels/
# Everything comes from PyPI. On linux/amd64 PyPI's torch is the CUDA build and pulls the CUDA
# runtime wheels (several GB): PyTorch's own CPU-only wheel index would make the image far smaller
# but is not a registry this project's machines can reach, so it is not used. The CUDA build runs
# on the CPU unchanged. On linux/arm64, PyPI's torch is CPU-only and onnxruntime replaces
# onnxruntime-gpu (pyproject.toml markers).
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/maskrt-*.whl \
    && /opt/venv/bin/python -c "import torch, onnxruntime, maskrt.server; print('torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"

FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MASKRT_HOST=0.0.0.0 \
    MASKRT_PORT=8000 \
    MASKRT_BACKEND=onnxruntime \
    MASKRT_DEVICE=cpu \
    MASKRT_CACHE_DIR=/var/cache/maskrt
COPY --from=cpu-build /opt/venv/ /opt/venv/
COPY --from=wheel /opt/maskrt/build-id /opt/maskrt/build-id
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/maskrt-entrypoint
COPY --chmod=0755 docker/maskrt_env.py /usr/local/bin/maskrt-env
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/maskrt-healthcheck
RUN groupadd --system --gid 10001 maskrt \
    && useradd --system --uid 10001 --gid maskrt --create-home --home-dir /home/maskrt --shell /usr/sbin/nologin maskrt \
    && install -d -o maskrt -g maskrt -m 0755 /var/cache/maskrt /var/cache/maskrt/onnx /var/cache/maskrt/engines
USER maskrt
WORKDIR /home/maskrt
EXPOSE 8000
# the Open Inference Protocol over gRPC (MASKRT_GRPC_PORT's default; 0 turns it off)
EXPOSE 8001
# start-period: the first start exports the ONNX (seconds) before the server turns ready.
HEALTHCHECK --interval=10s --timeout=5s --start-period=5m --retries=3 CMD ["maskrt-healthcheck"]
ENTRYPOINT ["maskrt-entrypoint"]

# --------------------------------------------------------------------------------------------------
# gpu-build: compile the TensorRT plugin library and install maskrt into a venv that also sees the
# base image's TensorRT Python bindings (--system-site-packages), so Python, the plugin and the
# engines all use the one TensorRT of the base image.
FROM ${TENSORRT_IMAGE} AS gpu-build
# Real SASS for Turing to Blackwell (CUDA 13 dropped older GPUs) plus sm_120 PTX for newer ones.
ARG CUDA_ARCHITECTURES="75-real;80-real;86-real;89-real;90-real;100-real;120"
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake python3-venv \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY plugins/ /src/plugins/
RUN cmake -S /src/plugins -B /build/plugins -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" \
    && cmake --build /build/plugins --parallel "$(nproc)" \
    && lib="$(find /build/plugins -name libmaskrt_plugins.so -print -quit)" \
    && if [ -z "$lib" ]; then echo "plugins/ built no libmaskrt_plugins.so" >&2; exit 1; fi \
    && install -D -m 0644 "$lib" /opt/maskrt/lib/libmaskrt_plugins.so
COPY --from=wheel /wheels/ /wheels/
# torch (cu130) and onnxruntime-gpu come from PyPI; tensorrt is the base image's (not the
# `tensorrt` extra, which would bring a second TensorRT from PyPI).
RUN python3 -m venv --system-site-packages /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir /wheels/maskrt-*.whl \
    && /opt/venv/bin/python -c "import tensorrt, torch, onnxruntime, maskrt.server; print('tensorrt', tensorrt.__version__, 'torch', torch.__version__, 'onnxruntime', onnxruntime.__version__)"

# --------------------------------------------------------------------------------------------------
# gpu: the TensorRT runtime image. At start the server exports the ONNX (unless given) and builds
# the engine for the GPU it finds, or reuses the cached ones (volume /var/cache/maskrt), then turns
# ready; MASKRT_BACKEND=auto serves on the torch backend instead when TensorRT cannot (and says so).
FROM ${TENSORRT_IMAGE} AS gpu
ENV PATH=/opt/venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    MASKRT_HOST=0.0.0.0 \
    MASKRT_PORT=8000 \
    MASKRT_BACKEND=auto \
    MASKRT_DEVICE=cuda:0 \
    MASKRT_CACHE_DIR=/var/cache/maskrt \
    MASKRT_PLUGIN_LIB=/opt/maskrt/lib/libmaskrt_plugins.so
COPY --from=gpu-build /opt/venv/ /opt/venv/
COPY --from=gpu-build /opt/maskrt/lib/ /opt/maskrt/lib/
COPY --from=wheel /opt/maskrt/build-id /opt/maskrt/build-id
COPY --chmod=0755 docker/entrypoint.sh /usr/local/bin/maskrt-entrypoint
COPY --chmod=0755 docker/maskrt_env.py /usr/local/bin/maskrt-env
COPY --chmod=0755 docker/healthcheck.py /usr/local/bin/maskrt-healthcheck
RUN groupadd --system --gid 10001 maskrt \
    && useradd --system --uid 10001 --gid maskrt --create-home --home-dir /home/maskrt --shell /usr/sbin/nologin maskrt \
    && install -d -o maskrt -g maskrt -m 0755 /var/cache/maskrt /var/cache/maskrt/onnx /var/cache/maskrt/engines
USER maskrt
WORKDIR /home/maskrt
EXPOSE 8000
# the Open Inference Protocol over gRPC (MASKRT_GRPC_PORT's default; 0 turns it off)
EXPOSE 8001
# start-period: the first start on a new GPU builds the TensorRT engine (minutes) before the
# server turns ready; a restart with the cached engine is ready in seconds.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30m --retries=3 CMD ["maskrt-healthcheck"]
ENTRYPOINT ["maskrt-entrypoint"]
