"""``maskrt train``, ``maskrt evaluate`` and ``maskrt datasets``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt.runtime.options import MODEL_OPTIONS, RuntimeOptions, add_flags, from_flags

if TYPE_CHECKING:
    from maskrt.model.checkpoint import ModelOptions

DATA_HELP = (
    "a COCO folder (annotations/instances_<split>.json beside <split>/, or annotations.json "
    "beside the images), an annotations JSON, or a generated set: shapes:COUNT:SEED, "
    "photoshapes:COUNT:SEED (shapes on photos and shape-free photos), photomix:COUNT:SEED (the "
    "same over more photos, colour-jittered), photoneg:COUNT:SEED (photomix with half negatives "
    "and unlabelled non-shape blobs), photohard:COUNT:SEED (photoneg with shaded shapes and "
    "blobs among the unlabelled ones), photos:COUNT:SEED "
    "(held-out photos, no shapes)"
)
IMAGES_HELP = "image folder of an annotations JSON given as --data (default: found beside it)"
# the runtime options `maskrt evaluate` takes as flags (its backend and batch size are its own)
EVALUATE_OPTIONS = ("model", *MODEL_OPTIONS, "cache_dir", "device")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a Mask R-CNN from a config on a COCO-format data set")
    p.add_argument(
        "--config",
        help="model config name (default: the --init checkpoint's, else shapes)",
    )
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--images", type=Path, help=IMAGES_HELP)
    p.add_argument(
        "--init",
        help="start from these weights (fine-tuning): a maskrt checkpoint, a torchvision state "
        "dict, or torchvision weights by name; weights that fit load, heads for another class "
        "count start afresh",
    )
    add_flags(p, ["canvas"])
    p.add_argument("--out", type=Path, required=True, help="output directory for checkpoints")
    p.add_argument("--epochs", type=int, default=12, help="passes over the data")
    p.add_argument("--steps", type=int, help="total optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=8, help="images per step")
    p.add_argument("--lr", type=float, default=0.02, help="peak learning rate (SGD)")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument(
        "--warmup-steps", type=int, default=500, help="steps of linear learning-rate warm-up"
    )
    p.add_argument(
        "--schedule",
        choices=("cosine", "step"),
        default="cosine",
        help="decay after warm-up (step: x0.1 at 2/3 and 8/9 of training)",
    )
    p.add_argument("--clip-grad", type=float, default=10.0, help="max gradient norm (0: off)")
    p.add_argument("--workers", type=int, default=1, help="data loader processes")
    p.add_argument("--seed", type=int, default=0, help="of initialisation, order and flips")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--resume", type=Path, help="a last.pt written by an earlier run")
    p.set_defaults(func=_train)

    p = sub.add_parser("evaluate", help="COCO bbox and segm AP of a model on a data set")
    add_model_arguments(p)
    p.add_argument(
        "--data",
        default="shapes:500:2",
        help=DATA_HELP + "; shapes:500:2 is held out from the shipped model's training",
    )
    p.add_argument("--images", type=Path, help=IMAGES_HELP)
    p.add_argument(
        "--backend",
        choices=("eager", "torch", "onnxruntime", "tensorrt"),
        default="eager",
        help="eager: torchvision's own forward; the others run the serving pipeline "
        "(letterbox, deploy graph, post-processing) exactly as the server does",
    )
    p.add_argument("--batch-size", type=int, default=8)
    add_flags(p, EVALUATE_OPTIONS[-2:])
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "convert",
        help="write a model file as a maskrt checkpoint (e.g. a pickled whole model, once)",
        description="Load a model file as --model would be loaded (with --config, --labels, "
        "--canvas, --trust-pickle) and write it as a maskrt checkpoint: the state dict with its "
        "config and class names, which loads without unpickling code.",
    )
    add_model_arguments(p, default_model=False)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("datasets", help="write data sets to disk")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    s = kinds.add_parser("shapes", help="the synthetic shapes set in COCO instances format")
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--count", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=_shapes)


def add_model_arguments(p: argparse.ArgumentParser, default_model: bool = True) -> None:
    """``--model`` and what a user can say about it (:class:`~maskrt.model.checkpoint.ModelOptions`);
    :func:`model_options` reads them back."""
    p.add_argument(
        "--model",
        required=not default_model,
        help="a maskrt checkpoint, a torchvision state dict (.pt/.pth), or torchvision weights "
        "by name (MaskRCNN_ResNet50_FPN_Weights.COCO_V1)"
        + ("; default: the bundled shapes model" if default_model else ""),
    )
    add_flags(p, MODEL_OPTIONS)


def model_options(args: argparse.Namespace) -> ModelOptions:
    """What the model flags (and their variables) say about the model besides its file."""
    return from_flags(args, RuntimeOptions, MODEL_OPTIONS).model_options()


def _convert(args: argparse.Namespace) -> int:
    from maskrt.model.checkpoint import load_model, save_checkpoint

    loaded = load_model(args.model, model_options(args))
    path = save_checkpoint(args.out, loaded.model, loaded.config, {"converted_from": args.model})
    print(
        json.dumps(
            {
                "checkpoint": str(path),
                "config": loaded.config.name,
                "classes": list(loaded.config.classes[1:]),
            }
        )
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    from maskrt.model.train import TrainOptions, train

    fields = {k: v for k, v in vars(args).items() if k in TrainOptions.__dataclass_fields__}
    path = train(TrainOptions(**fields))
    print(f"model written to {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from maskrt.model.checkpoint import load_model
    from maskrt.model.coco import open_dataset
    from maskrt.model.evaluate import eager_predictor, evaluate
    from maskrt.runtime.backends import model_path, open_backend
    from maskrt.runtime.pipeline import Pipeline

    eager = args.backend == "eager"
    options = from_flags(
        args,
        RuntimeOptions,
        EVALUATE_OPTIONS,
        max_batch=args.batch_size,
        **({} if eager else {"backend": args.backend}),
    )
    data = open_dataset(args.data, args.images, split="val")
    if eager:
        device = torch.device(options.resolved_device())
        loaded = load_model(model_path(options), options.model_options())
        predict = eager_predictor(loaded, device)
        classes, source, version = loaded.config.classes, loaded.source, loaded.version
    else:
        pipeline = Pipeline(open_backend(options))
        predict = pipeline.predictor(score_threshold=0.0)
        info = pipeline.backend.info
        classes, source, version = info.classes, model_path(options), info.version
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
