"""The ``tensorrt`` ONNX target: the ``onnxruntime``-target graph rewritten for TensorRT's ONNX parser.

:func:`rewrite` (onnx-graphsurgeon):

- every ``com.maskrt::MultiLevelRoIAlign`` node becomes ONE node of op type
  ``MaskrtMultiLevelRoIAlign``, our TensorRT plugin (``plugins/roi_align/README.md``): same inputs (float32
  RoIs, one feature map per FPN level), output and int attributes, plus ``plugin_version`` "1" and
  ``plugin_namespace`` "" for the parser; the local function that ONNX Runtime ran is dropped;
- NMS stays ONNX ``NonMaxSuppression``, which TensorRT's parser imports to its NMS layer
  (``INMSLayer``; the ``EfficientNMS_TRT`` plugin is deprecated since TensorRT 10.12 in its favour);
- constants are folded, so that the inputs TensorRT needs as initializers (``TopK``'s ``K``,
  ``NonMaxSuppression``'s limits and thresholds) are initializers; :func:`tensorrt_problems` checks it.

Before the export traces anything, :func:`check_nms_limits` refuses a model config whose NMS calls
get more boxes than TensorRT's NMS layer considers (5,000 per call: it would keep the best 5,000
and drop the rest without a word) or than its ``TopK`` picks (K <= 3840), naming the config field.

The plugin node sits in domain ``ai.onnx.contrib``: TensorRT's parser looks a custom node's op type
up in the plugin registry under the namespace ``plugin_namespace`` ("", where our creator is), and
TensorRT 10.14's parser retries with the node's domain as the namespace when that fails, so the
domain never hides our creator; ``onnxruntime-extensions`` serves Python custom ops from that
domain, which is how ONNX Runtime still runs this graph (:func:`register_python_ops`, used by the
``onnxruntime`` backend) — so its detections are tested against the ``onnxruntime`` target without
a GPU.
"""

from __future__ import annotations

import onnx

from maskrt.errors import MaskrtError
from maskrt.export.onnx_ops import DOMAIN, ROI_ALIGN_ATTRIBUTES, ROI_ALIGN_OP
from maskrt.plugins import PLUGIN_NAME as PLUGIN_OP
from maskrt.plugins import PLUGIN_NAMESPACE, PLUGIN_VERSION

PLUGIN_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' domain (see the module docstring)
# node inputs TensorRT's ONNX parser accepts only as initializers: op type -> input indices
INITIALIZER_INPUTS = {"TopK": (1,), "NonMaxSuppression": (2, 3, 4)}
# the node attributes the parser consumes itself to find the creator (not plugin fields)
PLUGIN_SELECTORS = ("plugin_version", "plugin_namespace")
MAX_TOPK = 3840  # TensorRT's largest TopK K (ITopKLayer)
# boxes TensorRT's NMS layer (INMSLayer, what the parser makes of NonMaxSuppression) considers per
# call, the rest dropped: 5000 (2000 on sm 5.3 and 6.2, Jetson TX1/TX2, which TensorRT 10 dropped)
MAX_NMS_BOXES = 5000


def check_nms_limits(nms_boxes: dict[str, int]) -> None:
    """Refuse a tensorrt-target export whose NMS calls exceed TensorRT's limits: ``nms_boxes``
    maps each config field to the boxes per NMS call it gives, which is also the ``TopK`` K that
    picks them (``DeployGraph.nms_boxes``)."""
    problems = []
    for field, boxes in nms_boxes.items():
        over = []
        if boxes > MAX_NMS_BOXES:
            over.append(
                f"TensorRT's NMS considers at most {MAX_NMS_BOXES} boxes per call and would drop "
                f"the rest"
            )
        if boxes > MAX_TOPK:
            over.append(f"its TopK picks at most K={MAX_TOPK}")
        if over:
            problems.append(
                f"model config {field}={boxes} gives {boxes} boxes per NMS call, but "
                f"{' and '.join(over)}: set {field} to at most {min(MAX_NMS_BOXES, MAX_TOPK)} in "
                f"the model's config"
            )
    if problems:
        raise MaskrtError(
            "the tensorrt target: " + "; ".join(problems) + " (or export --target onnxruntime)"
        )


def rewrite(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ``tensorrt``-target variant of an ``onnxruntime``-target model (metadata kept,
    ``maskrt.target`` set)."""
    import onnx_graphsurgeon as gs

    from maskrt.export.artifacts import set_metadata_props

    functions = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, ROI_ALIGN_OP)]
    graph = gs.import_onnx(model)
    replaced = 0
    for node in graph.nodes:
        if node.op == ROI_ALIGN_OP and node.domain == DOMAIN:
            missing = [a for a in ROI_ALIGN_ATTRIBUTES if a not in node.attrs]
            if missing:
                raise MaskrtError(f"{node.name}: {ROI_ALIGN_OP} without attribute {missing[0]!r}")
            node.op, node.domain = PLUGIN_OP, PLUGIN_DOMAIN
            node.attrs = {
                **{a: int(node.attrs[a]) for a in ROI_ALIGN_ATTRIBUTES},
                "plugin_version": PLUGIN_VERSION,
                "plugin_namespace": PLUGIN_NAMESPACE,
            }
            replaced += 1
    if not replaced:
        raise MaskrtError(
            f"no {DOMAIN}::{ROI_ALIGN_OP} node to rewrite: not an onnxruntime-target maskrt graph"
        )
    graph.functions = [f for f in graph.functions if (f.domain, f.name) != (DOMAIN, ROI_ALIGN_OP)]
    graph.fold_constants().cleanup().toposort()
    out = gs.export_onnx(graph, do_type_check=True)
    del out.functions[:]
    out.functions.extend(functions)
    opsets = {o.domain: o.version for o in model.opset_import if o.domain != DOMAIN}
    opsets[PLUGIN_DOMAIN] = 1
    del out.opset_import[:]
    out.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets.items())
    out.ir_version = model.ir_version
    out.producer_name, out.producer_version = model.producer_name, model.producer_version
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    set_metadata_props(out, {"target": "tensorrt"})
    problems = tensorrt_problems(out)
    if problems:
        raise MaskrtError(
            "the tensorrt-target graph breaks TensorRT parser rules: " + "; ".join(problems)
        )
    return out


def plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The plugin nodes of a tensorrt-target model, in graph order."""
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP]


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """What in ``model`` TensorRT's ONNX parser would reject or mis-map (empty: nothing found)."""
    problems = []
    initializers = {t.name: t for t in model.graph.initializer}
    types = _tensor_types(model)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") and node.op_type != PLUGIN_OP:
            problems.append(f"{node.name}: custom op {node.domain}::{node.op_type} has no importer")
        if node.op_type == "RoiAlign":
            problems.append(f"{node.name}: ONNX RoiAlign maps to TensorRT's single-level layer")
        for index in INITIALIZER_INPUTS.get(node.op_type, ()):
            if (
                index < len(node.input)
                and node.input[index]
                and node.input[index] not in initializers
            ):
                problems.append(
                    f"{node.name}: {node.op_type} input {index} ({node.input[index]}) "
                    f"must be an initializer"
                )
        if node.op_type in ("ScatterND", "ScatterElements") and any(
            a.name == "reduction" for a in node.attribute
        ):
            problems.append(
                f"{node.name}: {node.op_type} has a 'reduction' attribute, which TensorRT "
                f"10.0-10.6's parser rejects even when it is 'none'"
            )
        if node.op_type == "TopK" and node.input[1] in initializers:
            k = int(onnx.numpy_helper.to_array(initializers[node.input[1]]).max())
            if k > MAX_TOPK:
                problems.append(f"{node.name}: TopK K={k} exceeds TensorRT's {MAX_TOPK}")
        if node.op_type == PLUGIN_OP:
            problems += _plugin_problems(node, types)
    if any((f.domain, f.name) == (DOMAIN, ROI_ALIGN_OP) for f in model.functions):
        problems.append(f"the {DOMAIN}::{ROI_ALIGN_OP} local function is still in the model")
    return problems


def _plugin_problems(node: onnx.NodeProto, types: dict[str, int]) -> list[str]:
    """What the parser or the plugin would refuse in one plugin node: float32 RoIs, one feature
    type (float32 or float16), and attributes that are int fields the creator lists (the parser
    turns INT attributes into int32 fields and hands over every attribute but the selectors)."""
    problems = []
    rois = types.get(node.input[0])
    if rois != onnx.TensorProto.FLOAT:
        name = onnx.TensorProto.DataType.Name(rois) if rois else "unknown type"
        problems.append(f"{node.name}: RoIs must be float32, got {name}")
    kinds = {types.get(name) for name in node.input[1:]}
    if len(kinds) != 1 or not kinds <= {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}:
        problems.append(f"{node.name}: features must be all float32 or all float16")
    for a in node.attribute:
        if a.name in PLUGIN_SELECTORS:
            continue
        if a.name not in ROI_ALIGN_ATTRIBUTES:
            problems.append(f"{node.name}: attribute {a.name!r} is not a field of {PLUGIN_OP}")
        elif a.type != onnx.AttributeProto.INT:
            problems.append(f"{node.name}: attribute {a.name!r} must be an INT")
    return problems


def _tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor of the main graph (ONNX shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


_REGISTERED: dict[str, int] = {}


def register_python_ops(model: onnx.ModelProto) -> str:
    """Register the Python implementation of the plugin node with ``onnxruntime-extensions`` and
    return its custom-op library path (for ``SessionOptions.register_custom_ops_library``).

    The implementation is ``torch.ops.maskrt.multilevel_roi_align`` (equal to torchvision's
    ``MultiScaleRoIAlign``), i.e. the op the plugin's kernel is tested against. float32 only, on
    the CPU: this runs the graph's checks, not production traffic.
    """
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ModuleNotFoundError:
        raise MaskrtError(
            "running a tensorrt-target ONNX in ONNX Runtime needs onnxruntime-extensions "
            "(pip install onnxruntime-extensions); serve it with TensorRT instead, "
            "or export --target onnxruntime"
        ) from None
    levels = {len(n.input) - 1 for n in plugin_nodes(model)}
    if len(levels) != 1:
        raise MaskrtError(
            f"expected {PLUGIN_OP} nodes with one number of levels, got {sorted(levels)}"
        )
    (num_levels,) = levels
    types = _tensor_types(model)
    if any(
        types.get(name) == onnx.TensorProto.FLOAT16 for n in plugin_nodes(model) for name in n.input
    ):
        # onnxruntime-extensions' Python ops have no float16 (and abort the process on it)
        raise MaskrtError(
            "this tensorrt-target graph feeds float16 features to the plugin; ONNX "
            "Runtime's Python custom ops take float32 only: check the fp32 export "
            "in ONNX Runtime, build this one with TensorRT"
        )
    known = _REGISTERED.get(PLUGIN_OP)
    if known is None:
        _define_op(onnx_op, PyCustomOpDef, num_levels)
        _REGISTERED[PLUGIN_OP] = num_levels
    elif known != num_levels:
        raise MaskrtError(
            f"{PLUGIN_OP} is registered for {known} levels in this process; this model "
            f"has {num_levels}"
        )
    return get_library_path()


def _define_op(onnx_op, defs, num_levels: int) -> None:
    import numpy as np
    import torch

    import maskrt.model.roi_align  # noqa: F401  (registers torch.ops.maskrt.multilevel_roi_align)

    @onnx_op(
        op_type=PLUGIN_OP,
        inputs=[defs.dt_float] * (1 + num_levels),
        outputs=[defs.dt_float],
        attrs={name: defs.dt_int64 for name in ROI_ALIGN_ATTRIBUTES},
    )
    def multilevel_roi_align(
        rois,
        *features,
        output_size,
        sampling_ratio,
        aligned,
        canonical_scale,
        canonical_level,
        first_level,
    ):
        with torch.inference_mode():
            pooled = torch.ops.maskrt.multilevel_roi_align(
                torch.from_numpy(np.ascontiguousarray(rois)),
                [torch.from_numpy(np.ascontiguousarray(f)) for f in features],
                output_size,
                sampling_ratio,
                bool(aligned),
                canonical_scale,
                canonical_level,
                first_level,
            )
        return pooled.numpy()
