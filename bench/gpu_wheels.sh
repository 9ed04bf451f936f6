#!/usr/bin/env bash
# Fills .wheels-gpu/ for bench/gpu_session.sh on a machine that has torch but not maskrt's other
# dependencies and no package index (a lent GPU): maskrt's own wheel, plus CPython 3.12 x86-64
# wheels of the packages that machine lacked (seen on an H200 image with torch 2.11), at the
# versions installed in .venv. Run here, in the repo root, after `make install`.
#
#   bash bench/gpu_wheels.sh && ls .wheels-gpu
set -eu
missing="fastapi starlette pydantic pydantic_core pydantic-settings python-dotenv annotated-types
  annotated-doc typing-inspection typing_extensions python-multipart orjson pycocotools
  onnx_graphsurgeon fastapi_offline uvicorn httptools anyio opentelemetry-api"
rm -rf .wheels-gpu
mkdir -p .wheels-gpu
pins=$(.venv/bin/python -c 'import sys
from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' $missing)
# shellcheck disable=SC2086  # one argument per pin
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp -d .wheels-gpu --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 $pins
.venv/bin/pip wheel -q --no-deps --no-build-isolation -w .wheels-gpu .
rm -rf build
echo "$(ls .wheels-gpu | wc -l) wheels, $(du -sh .wheels-gpu | cut -f1) in .wheels-gpu/"
