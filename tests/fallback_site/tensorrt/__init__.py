"""A ``tensorrt`` that imports but is not TensorRT's Python bindings (as a stubs-only package
is): maskrt's TensorRT import refuses it with the error a host without TensorRT gets."""
