"""Triton's gRPC protocol (``inference.GRPCInferenceService``), generated from its ``.proto``
files (README.md here says where they come from and how to regenerate)."""
