"""The inference service: FastAPI app, settings, dynamic batcher, backends, pre/post-processing."""
