"""int8 ONNX for ONNX Runtime on the CPU (``maskrt export onnx --int8 --calibration SPEC``).

ONNX Runtime's static quantization: QDQ format, int8 weights per output channel, uint8
activations with ranges calibrated (min/max) on the images of a data set (``shapes:64:3`` for the
bundled model, or a COCO directory), letterboxed exactly as the server letterboxes them. The frozen
batch norms are first folded into their convolutions; then only the convolutions and fully
connected layers are quantized (the backbone, FPN, RPN head, box head and mask head, its 2x
upsampling included, which the onnxruntime target exports as a convolution: nearly all the
arithmetic); box decoding, NMS, RoIAlign and the mask logits of the detected class (a MatMul with
weights gathered per detection) stay float32. Outputs and metadata are the float graph's
(``maskrt.precision`` becomes ``int8``), so the onnxruntime backend serves the file unchanged.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from maskrt.errors import MaskrtError

log = logging.getLogger("maskrt.export")

QUANTIZED_OPS = ["Conv", "Gemm"]


def calibration_images(data, canvas: int, image_mean) -> Iterator[np.ndarray]:
    """uint8 ``[1, 3, S, S]`` letterboxed images of a data set (``maskrt.model.coco``), one at a
    time."""
    import torch

    from maskrt.model.letterbox import fill_colour, letterbox_batch

    fill = fill_colour(image_mean)
    for index in range(len(data)):
        image = torch.from_numpy(np.ascontiguousarray(data[index].image)).permute(2, 0, 1)
        yield letterbox_batch([image], canvas, fill)[0].numpy()


def fold_for_quantization(source: Path, out: Path):
    """The ``ModelProto`` of ``source`` after ONNX Runtime's basic graph optimisations (constant
    folding, the frozen batch norms folded into their convolutions, functions inlined): what the
    quantizer should see, or every frozen batch norm stays a float ``Mul`` + ``Add`` between a
    ``DequantizeLinear`` and a ``QuantizeLinear``. This is the optimisation step of ONNX Runtime's
    ``quant_pre_process`` (its shape inference passes left out); the model is tagged as
    pre-processed, as that function tags it."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization.quant_utils import add_pre_process_metadata

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    folded = onnx.load_model(str(out))
    add_pre_process_metadata(folded)
    return folded


def quantize_int8(proto, data):
    """The int8 (QDQ) ``ModelProto`` of an ``onnxruntime``-target float32 ``proto``, calibrated on
    ``data`` (``maskrt.model.coco.open_dataset(spec)``)."""
    import json

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from maskrt.export.artifacts import INPUT_NAME, check, read_metadata, set_metadata_props

    meta = read_metadata(proto)
    canvas = int(meta["canvas"])
    image_mean = json.loads(meta["config"])["image_mean"]
    if len(data) == 0:
        raise MaskrtError(f"--calibration {data.source}: the data set has no images")
    images = calibration_images(data, canvas, image_mean)

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict | None:
            batch = next(images, None)
            return None if batch is None else {INPUT_NAME: batch}

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="maskrt-int8-") as tmp:
        source, out = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, str(source))
        folded = fold_for_quantization(source, Path(tmp) / "folded.onnx")
        quantize_static(
            folded,
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        quantized = onnx.load_model(str(out))
    set_metadata_props(quantized, {**meta, "precision": "int8", "calibration": data.source})
    check(quantized)
    log.info(
        "quantized to int8, calibrated on %d images of %s, in %.1f s",
        len(data),
        data.source,
        time.perf_counter() - started,
    )
    return quantized
