"""``maskrt train``, ``maskrt evaluate`` and ``maskrt datasets``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

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
    p.add_argument("--canvas", type=int, help=OPTION_HELP["--canvas"])
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
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="where a checkpoint's ONNX export is cached (default: MASKRT_CACHE_DIR)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
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
    add_model_options(p)


def add_model_options(p: argparse.ArgumentParser) -> None:
    """``--config``, ``--labels``, ``--canvas`` and ``--trust-pickle``."""
    for flag, text in OPTION_HELP.items():
        p.add_argument(flag, type=int if flag == "--canvas" else str, help=text)
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)


OPTION_HELP = {
    "--config": "layout of a bare state dict, e.g. resnet50_fpn (default: recognised from the "
    "weights where one known config fits)",
    "--labels": "class names without the background, a comma list or a file with one per line "
    "(default: the checkpoint's; COCO's for torchvision's 91 classes, else class_1..class_N)",
    "--canvas": "side of the square input in pixels, a multiple of 32 (default: the config's)",
}
TRUST_PICKLE_HELP = (
    "load a pickled whole model (torch.save(model)); unpickling runs code from the file, so "
    "only for files you trust"
)


def model_options(args: argparse.Namespace):
    from maskrt.model.checkpoint import ModelOptions
    from maskrt.model.config import parse_labels

    return ModelOptions(
        config=args.config,
        labels=parse_labels(args.labels) if args.labels else None,
        canvas=args.canvas,
        trust_pickle=args.trust_pickle,
    )


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

    from maskrt.devices import resolve_device
    from maskrt.model.checkpoint import default_checkpoint, load_model
    from maskrt.model.coco import open_dataset
    from maskrt.model.evaluate import eager_predictor, evaluate
    from maskrt.runtime.decode import ignore_expected_warnings

    ignore_expected_warnings()
    data = open_dataset(args.data, args.images, split="val")
    if args.backend == "eager":
        device = torch.device(resolve_device(args.device))
        loaded = load_model(args.model or default_checkpoint(), model_options(args))
        predict = eager_predictor(loaded, device)
        classes, source, version = loaded.config.classes, loaded.source, loaded.version
    else:
        from maskrt.runtime.backends import model_path, open_backend
        from maskrt.runtime.pipeline import Pipeline
        from maskrt.server.settings import Settings

        said = ("cache_dir", "config", "labels", "canvas")
        fields = {k: getattr(args, k) for k in said if getattr(args, k) is not None}
        settings = Settings(
            model=args.model,
            backend=args.backend,
            device=args.device,
            max_batch=args.batch_size,
            trust_pickle=args.trust_pickle,
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
