"""The peers of ``maskrt bench peers``: what a user would write with torchvision alone.

- ``naive``: FastAPI, the torchvision model eager, one request at a time;
- ``litserve``: LitServe with its dynamic batching (``max_batch_size`` 8, ``batch_timeout`` 5 ms),
  the same eager model (``pip install 'maskrt[bench]'``).

Both load the same checkpoint as ``maskrt serve`` (torchvision's ``MaskRCNN`` with its weights),
resize as torchvision does with ``min_size = max_size = canvas`` (the pixels maskrt's letterbox
gives its graph), and answer like ``POST /predict`` (multipart field ``image``): box, score,
class id, label and the COCO RLE of ``pycocotools.mask.encode`` for each detection above
``--score-threshold``. ``GET /health`` answers 200 once the model is loaded.

    python -m maskrt.bench.peer_servers naive --port 8101 [--model CKPT] [--canvas 640]
"""

from __future__ import annotations

import argparse
import threading

from fastapi import FastAPI, UploadFile  # at module level: FastAPI resolves the annotations here

from maskrt.bench.eager_model import EagerModel

KINDS = ("naive", "litserve")


def serve_naive(model: EagerModel, port: int) -> None:
    """FastAPI, one request at a time (a lock around the model), as in most tutorials."""
    import uvicorn

    app = FastAPI()
    lock = threading.Lock()

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.post("/predict")
    def predict(image: UploadFile) -> dict:
        tensor = model.decode(image.file.read())
        with lock:
            return model.predict([tensor])[0]

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", help="checkpoint (default: the bundled shapes model)")
    parser.add_argument("--canvas", type=int, help="min_size = max_size (default: the config's)")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--max-batch", type=int, default=8, help="litserve: max_batch_size")
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0, help="litserve")
    args = parser.parse_args(argv)
    model_args = {
        "model": args.model,
        "canvas": args.canvas,
        "score_threshold": args.score_threshold,
        "device": args.device,
    }
    if args.kind == "naive":
        serve_naive(EagerModel(**model_args), args.port)
    else:
        from maskrt.bench.peer_litserve import serve  # litserve: the optional `bench` extra

        serve(model_args, args.port, args.max_batch, args.batch_timeout_ms / 1000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
