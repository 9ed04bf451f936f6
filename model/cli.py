"""``maskrt train``, ``maskrt evaluate`` and ``maskrt datasets``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from maskrt.errors import MaskrtError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Mask R-CNN from a config on a COCO-format data set")
    p.add_argument("--config", default="shapes", help="model config name (default: shapes)")
    p.add_argument(
        "--data", required=True, help="COCO dir / annotations JSON, or shapes:COUNT:SEED"
    )
    p.add_argument("--out", type=Path, required=True, help="output directory for checkpoints")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=500)
    p.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    p.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0: off)")
    p.add_argument("--workers", type=int, default=1, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--resume", type=Path, help="a last.pt written by an earlier run")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="COCO bbox and segm AP of a model on a data set")
    p.add_argument("--model", help="checkpoint (default: the shipped shapes model)")
    p.add_argument("--config", help="config of a bare torchvision state dict")
    p.add_argument(
        "--data",
        default="shapes:500:2",
        help="COCO dir / annotations JSON, or shapes:COUNT:SEED (default: shapes:500:2, "
        "held out from the shipped model's training seed 1)",
    )
    p.add_argument(
        "--backend",
        choices=("eager", "torch", "onnxruntime", "tensorrt"),
        default="eager",
        help="eager: torchvision's own forward; the others run the serving pipeline "
        "(letterbox, deploy graph, post-processing) exactly as the server does",
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="where a checkpoint's ONNX export is cached (default: MASKRT_CACHE_DIR)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("datasets", help="write data sets to disk")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    s = kinds.add_parser("shapes", help="the synthetic shapes set in COCO instances format")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--count", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_shapes)


def _train(args: argparse.Namespace) -> int:
    from maskrt.model.train import TrainOptions, train

    fields = {k: v for k, v in vars(args).items() if k in TrainOptions.__dataclass_fields__}
    path = train(TrainOptions(**fields))
    print(f"model written to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from maskrt.devices import resolve_device
    from maskrt.model.checkpoint import default_checkpoint, load_checkpoint
    from maskrt.model.coco import open_dataset
    from maskrt.model.evaluate import eager_predictor, evaluate

    data = open_dataset(args.data)
    if args.backend == "eager":
        device = torch.device(resolve_device(args.device))
        loaded = load_checkpoint(args.model or default_checkpoint(), args.config)
        predict = eager_predictor(loaded, device)
        classes, source, version = loaded.config.classes, loaded.source, loaded.version
    else:
        from maskrt.server.backends import model_path, open_backend
        from maskrt.server.pipeline import Pipeline
        from maskrt.server.settings import Settings

        if args.config:
            raise MaskrtError(
                "--config applies to --backend eager only; export a bare state dict "
                "to a maskrt checkpoint first"
            )
        fields = {"cache_dir": args.cache_dir} if args.cache_dir else {}
        settings = Settings(
            model=args.model,
            backend=args.backend,
            device=args.device,
            max_batch=args.batch_size,
            **fields,
        )
        pipeline = Pipeline(open_backend(settings))
        predict = pipeline.predictor(score_threshold=0.0)
        info = pipeline.backend.info
        classes, source, version = info.classes, model_path(settings), info.version
        device = pipeline.device
    metrics = evaluate(data, predict, classes, args.batch_size)
    print(
        json.dumps(
            {
                "model": source,
                "sha256": version,
                "data": args.data,
                "backend": args.backend,
                "device": str(device),
                **metrics,
            }
        )
    )
    return 0


def _shapes(args: argparse.Namespace) -> int:
    from maskrt.model.shapes import write_coco

    path = write_coco(args.out, args.count, args.seed)
    print(json.dumps({"annotations": str(path), "images": args.count, "seed": args.seed}))
    return 0
