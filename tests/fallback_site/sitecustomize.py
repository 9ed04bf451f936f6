"""Put on a ``maskrt serve``'s ``PYTHONPATH`` by tests/test_backend_fallback.py (never installed):
Python imports it at start-up, and it makes TensorRT's device check true on this CPU machine, so
that ``backend=auto`` tries the real TensorRT path there. That path then fails as it does on a GPU
host without TensorRT, on the ``tensorrt`` package beside this module, which is not TensorRT's
bindings. Only the seam changes (:func:`maskrt.runtime.backends.tensorrt_device`); the
TensorRT path, its error, the fallback and the server are the real ones."""

import maskrt.runtime.backends

maskrt.runtime.backends.tensorrt_device = lambda device: True
