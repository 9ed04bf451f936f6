"""Benchmarks of maskrt (``maskrt bench``): the HTTP load generator, per-detection parity of two
backends, and component benchmarks (post-processing, ONNX Runtime on the CPU, the RoIAlign kernel
on a GPU). They report speed as ratios against torchvision, never as test assertions; results and
how they were run are in ``docs/benchmarks.md``.
"""
