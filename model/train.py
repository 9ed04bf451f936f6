"""Training: the Mask R-CNN recipe (SGD with momentum and weight decay, linear warm-up, then step
or cosine decay), the same code on CPU and CUDA (AMP on CUDA), a checkpoint per epoch, resume."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maskrt.devices import resolve_device
from maskrt.errors import MaskrtError
from maskrt.model.build import build_model
from maskrt.model.checkpoint import (
    FORMAT,
    fit_config,
    init_weights,
    load_state_dict,
    read_file,
    read_state,
    save_checkpoint,
)
from maskrt.model.coco import CocoInstances, Sample, open_dataset
from maskrt.model.config import ModelConfig, get_config
from maskrt.progress import Progress, say


@dataclass
class TrainOptions:
    config: str | None  # None: the --init checkpoint's, else "shapes"
    data: str
    out: Path
    images: Path | None = None  # image folder of an annotations JSON given as ``data``
    init: str | None = None  # weights to start from (fine-tuning)
    canvas: int | None = None  # None: the config's
    epochs: int = 12
    steps: int | None = None  # overrides epochs when given
    batch_size: int = 8
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_steps: int = 500
    schedule: str = "cosine"  # or "step" (x0.1 at 2/3 and 8/9 of training, as in the paper)
    clip_grad: float = 10.0
    workers: int = 1
    seed: int = 0
    device: str = "auto"
    resume: Path | None = None


def to_training_pair(sample: Sample, flip: bool) -> tuple[torch.Tensor, dict]:
    image = torch.from_numpy(sample.image).permute(2, 0, 1).float().div_(255.0)
    boxes = torch.from_numpy(sample.boxes)
    masks = torch.from_numpy(sample.masks)
    if flip:
        width = image.shape[-1]
        image, masks = image.flip(-1), masks.flip(-1)
        boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], 1)
    return image, {"boxes": boxes, "labels": torch.from_numpy(sample.labels), "masks": masks}


class _Augmented(torch.utils.data.Dataset):
    def __init__(self, data: CocoInstances, seed: int):
        self.data, self.seed, self.epoch = data, seed, 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        flip = np.random.default_rng([self.seed, self.epoch, index]).random() < 0.5
        return to_training_pair(self.data[index], flip)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step``."""
    warm = min(1.0, 0.001 + (1 - 0.001) * step / warmup) if warmup else 1.0
    if schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    else:
        decay = 0.1 ** sum(step >= int(total * f) for f in (2 / 3, 8 / 9))
    return warm * decay


def train(opts: TrainOptions) -> Path:
    """Train and return the path of the final model (fp16 weights, no optimizer state)."""
    torch.manual_seed(opts.seed)
    device = torch.device(resolve_device(opts.device))
    data = open_dataset(opts.data, opts.images, split="train")
    init_state, init_config = read_state(opts.init) if opts.init else ({}, None)
    if opts.config:
        cfg: ModelConfig = get_config(opts.config)
    elif opts.init:
        cfg = init_config or fit_config(init_state, None, opts.init)
    else:
        cfg = get_config("shapes")
    cfg = cfg.with_canvas(opts.canvas)
    if data.classes[1:] != cfg.classes[1:]:
        cfg = cfg.replace(classes=data.classes)  # fine-tuning on another label set
    model = build_model(cfg)
    if opts.init:
        fresh = init_weights(model, init_state, opts.init)
        say(
            f"--init {opts.init}: weights loaded"
            + (f"; initialised afresh (no fitting weights): {', '.join(fresh)}" if fresh else "")
        )
    model = model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params, lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay
    )
    dataset = _Augmented(data, opts.seed)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=opts.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=opts.workers,
        collate_fn=lambda batch: tuple(zip(*batch)),
        generator=torch.Generator().manual_seed(opts.seed),
        persistent_workers=False,
    )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise MaskrtError(
            f"{opts.data}: fewer images ({len(data)}) than one batch ({opts.batch_size})"
        )
    total = opts.steps or opts.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, opts.warmup_steps, opts.schedule)
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    step, first_epoch = 0, 0
    if opts.resume:
        state = read_file(opts.resume)
        if not (isinstance(state, dict) and state.get("format") == FORMAT and "training" in state):
            raise MaskrtError(
                f"{opts.resume}: not a maskrt training checkpoint (no optimizer state)"
            )
        load_state_dict(model, state["state_dict"], str(opts.resume))
        optimizer.load_state_dict(state["training"]["optimizer"])
        scheduler.load_state_dict(state["training"]["scheduler"])
        step, first_epoch = state["training"]["step"], state["training"]["epoch"]

    opts.out.mkdir(parents=True, exist_ok=True)
    provenance = {
        "dataset": opts.data,
        "config": cfg.name,
        **({"init": opts.init} if opts.init else {}),
        "batch_size": opts.batch_size,
        "lr": opts.lr,
        "schedule": opts.schedule,
        "total_steps": total,
    }
    started = time.monotonic()
    model.train()
    progress = Progress(total, "train", "steps")
    progress.update(step)  # a resumed run starts where the last one stopped
    for epoch in range(first_epoch, epochs):
        dataset.epoch = epoch
        for images, targets in loader:
            if step >= total:
                break
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                losses = model(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise MaskrtError(f"training diverged at step {step}: losses {_fmt(losses)}")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if opts.clip_grad:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, opts.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            progress.update(
                note=f"epoch {epoch + 1}/{epochs}, loss {loss.item():.3f} {_fmt(losses)} "
                f"lr {scheduler.get_last_lr()[0]:.4f}"
            )
        training = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "step": step,
            "epoch": epoch + 1,
        }
        path = save_checkpoint(
            opts.out / "last.pt",
            model,
            cfg,
            {**provenance, "steps": step, "epoch": epoch + 1},
            training=training,
        )
        say(f"epoch {epoch + 1}: step {step}/{total}, {time.monotonic() - started:.0f} s, {path}")
    progress.close()
    final = save_checkpoint(
        opts.out / "model.pt",
        model,
        cfg,
        {**provenance, "steps": step, "seconds": round(time.monotonic() - started)},
        half=True,
    )
    return final


def _fmt(losses: dict) -> str:
    return " ".join(f"{k.removeprefix('loss_')} {v.item():.3f}" for k, v in losses.items())
