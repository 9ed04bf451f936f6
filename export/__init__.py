"""Turning a checkpoint into what the backends run: the static-shape deploy graph as ONNX for two
targets (:mod:`~maskrt.export.onnx`; ``tensorrt`` rewritten by :mod:`~maskrt.export.tensorrt_onnx`
so that TensorRT's parser maps each multi-level RoIAlign to maskrt's plugin), TensorRT engines
built from it (:mod:`~maskrt.export.tensorrt`; running them is the ``tensorrt`` backend's), and the
cache that makes each of these once per model, GPU and TensorRT version (:mod:`~maskrt.export.cache`).
``maskrt export onnx|engine`` is the command line (:mod:`maskrt.cli.export`); the formats of what
it writes are :mod:`~maskrt.export.artifacts`.
"""
