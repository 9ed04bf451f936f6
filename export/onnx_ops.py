"""ONNX for maskrt's two custom PyTorch ops (``torch.export``-based exporter, ``dynamo=True``).

- ``maskrt::multilevel_roi_align`` becomes ONE node ``com.maskrt::MultiLevelRoIAlign`` per call,
  with the contract's int attributes (``output_size``, ``sampling_ratio``, ``aligned``,
  ``canonical_scale``, ``canonical_level``, ``first_level``) on the node. The model carries an ONNX
  local function of that name (:func:`multilevel_roi_align_function`) whose body uses standard ONNX
  ops only, so ONNX Runtime runs the node; the TensorRT rewrite swaps each node for the plugin node.
  The body: torchvision's level of each RoI (NaN area: no level, zeros), a sort of the RoIs by
  level, one standard ``RoiAlign`` per level on that level's slice (exactly torchvision's
  ``roi_align``: ``output_half_pixel`` for ``aligned=0``, ``half_pixel`` for ``aligned=1``), and a
  scatter back into RoI order: every RoI is pooled once, on its own level.
- ``maskrt::grouped_nms`` becomes standard ``NonMaxSuppression`` with one NMS "batch" per group,
  then ``ScatterND`` of the selected indices into the fixed-size keep mask.
"""

from __future__ import annotations

import math
from typing import Any

import onnx
from onnx import TensorProto, helper

DOMAIN = "com.maskrt"
DOMAIN_VERSION = 1
ROI_ALIGN_OP = "MultiLevelRoIAlign"
ROI_ALIGN_ATTRIBUTES = (
    "output_size",
    "sampling_ratio",
    "aligned",
    "canonical_scale",
    "canonical_level",
    "first_level",
)


# ---------------------------------------------------------------------------------------------
# the local function


def multilevel_roi_align_function(num_levels: int, opset: int) -> onnx.FunctionProto:
    """``com.maskrt::MultiLevelRoIAlign(rois, features_0 .. features_{L-1}) -> pooled`` as a
    FunctionProto over the default domain at ``opset`` (>= 16, for RoiAlign's coordinate modes)."""
    if opset < 16:
        raise ValueError(
            f"MultiLevelRoIAlign needs opset >= 16 (RoiAlign coordinate modes), got {opset}"
        )
    nodes: list[onnx.NodeProto] = []
    count = [0]

    def node(op: str, inputs: list[str], outputs: int = 1, **attrs) -> list[str]:
        count[0] += 1
        names = [f"{op.lower()}_{count[0]}_{i}" for i in range(outputs)]
        nodes.append(helper.make_node(op, inputs, names, **attrs))
        return names

    def one(op: str, *inputs: str, **attrs) -> str:
        return node(op, list(inputs), **attrs)[0]

    def const(value, dtype=TensorProto.FLOAT) -> str:
        values = value if isinstance(value, list) else [value]
        tensor = helper.make_tensor(
            f"c{count[0] + 1}", dtype, [len(values)] if isinstance(value, list) else [], values
        )
        return one("Constant", value=tensor)

    def attr_const(name: str) -> str:
        """A float scalar holding the function attribute ``name`` (an int)."""
        count[0] += 1
        out = f"attr_{name}_{count[0]}"
        constant = helper.make_node("Constant", [], [out])
        constant.attribute.append(ref_attr("value_int", name))
        nodes.append(constant)
        return one("Cast", out, to=TensorProto.FLOAT)

    def ref_attr(attr: str, ref: str) -> onnx.AttributeProto:
        a = onnx.AttributeProto()
        a.name, a.ref_attr_name, a.type = attr, ref, onnx.AttributeProto.INT
        return a

    features = [f"features_{i}" for i in range(num_levels)]
    rois_shape = one("Shape", "rois")
    batch = one("Slice", rois_shape, const([0], TensorProto.INT64), const([1], TensorProto.INT64))
    per_image = one(
        "Slice", rois_shape, const([1], TensorProto.INT64), const([2], TensorProto.INT64)
    )
    flat = one("Reshape", "rois", const([-1, 4], TensorProto.INT64))
    total = one(
        "Slice", one("Shape", flat), const([0], TensorProto.INT64), const([1], TensorProto.INT64)
    )
    # image index of every RoI: arange(B) repeated R times
    images = one(
        "Range", const(0, TensorProto.INT64), one("Squeeze", batch), const(1, TensorProto.INT64)
    )
    images = one(
        "Expand",
        one("Unsqueeze", images, const([1], TensorProto.INT64)),
        one("Concat", batch, per_image, axis=0),
    )
    images = one("Reshape", images, const([-1], TensorProto.INT64))

    # torchvision LevelMapper, float32 in its order: floor(lvl0 + log2(sqrt(area) / s0) + eps)
    first = attr_const("first_level")
    if num_levels == 1:
        level = one("ConstantOfShape", total)  # one map: every RoI pools from it (float 0)
    else:
        x1, y1, x2, y2 = node("Split", [flat, const([1, 1, 1, 1], TensorProto.INT64)], 4, axis=1)
        area = one("Mul", one("Sub", x2, x1), one("Sub", y2, y1))
        scaled = one(
            "Div",
            one("Sqrt", one("Squeeze", area, const([1], TensorProto.INT64))),
            attr_const("canonical_scale"),
        )
        log2 = one("Div", one("Log", scaled), const(math.log(2.0)))
        k = one("Floor", one("Add", one("Add", attr_const("canonical_level"), log2), const(1e-6)))
        last = one("Add", first, const(float(num_levels - 1)))
        k = one("Sub", one("Max", one("Min", k, last), first), first)
        level = one("Where", one("IsNaN", k), const(float(num_levels)), k)  # NaN area: no level

    # RoIs sorted by level; level l is the slice [end_{l-1}, end_l)
    _, order = node("TopK", [level, total], 2, axis=0, largest=0, sorted=1)
    sorted_rois = one("Gather", flat, order, axis=0)
    sorted_images = one("Gather", images, order, axis=0)
    aligned = one("Cast", attr_const("aligned"), to=TensorProto.BOOL)
    pooled, start = [], const([0], TensorProto.INT64)
    for index, feature in enumerate(features):
        below = one("Cast", one("Less", level, const(index + 0.5)), to=TensorProto.INT64)
        end = one("ReduceSum", below, const([0], TensorProto.INT64), keepdims=1)
        rois_l = one("Slice", sorted_rois, start, end, const([0], TensorProto.INT64))
        images_l = one("Slice", sorted_images, start, end, const([0], TensorProto.INT64))
        # scale the RoIs to the level (a power of two: exact) and pool at spatial_scale 1
        scale = one("Pow", const(2.0), one("Neg", one("Add", first, const(float(index)))))
        rois_l = one("CastLike", one("Mul", rois_l, scale), feature)
        branches = {}
        for flag, mode in (("then_branch", "half_pixel"), ("else_branch", "output_half_pixel")):
            out = f"pooled_{index}_{mode}"
            roi_align = helper.make_node(
                "RoiAlign",
                [feature, rois_l, images_l],
                [out],
                mode="avg",
                coordinate_transformation_mode=mode,
                spatial_scale=1.0,
            )
            roi_align.attribute.extend(
                [
                    ref_attr("output_height", "output_size"),
                    ref_attr("output_width", "output_size"),
                    ref_attr("sampling_ratio", "sampling_ratio"),
                ]
            )
            branches[flag] = helper.make_graph(
                [roi_align], f"roi_align_{index}_{mode}", [], [onnx.ValueInfoProto(name=out)]
            )
        pooled.append(one("If", aligned, **branches))
        start = end
    # back to RoI order: NaN-area RoIs (sorted last, past every level) get zero rows, then one
    # Gather by the inverse permutation
    tail = one(
        "Slice",
        one("Shape", pooled[0]),
        const([1], TensorProto.INT64),
        const([4], TensorProto.INT64),
    )
    missing = one("Sub", total, start)
    zeros = one("CastLike", one("ConstantOfShape", one("Concat", missing, tail, axis=0)), pooled[0])
    merged = one("Concat", *pooled, zeros, axis=0)  # [N, C, P, P] in level order
    positions = one(
        "Range", const(0, TensorProto.INT64), one("Squeeze", total), const(1, TensorProto.INT64)
    )
    inverse = one(
        "ScatterElements",
        one("ConstantOfShape", total, value=helper.make_tensor("z", TensorProto.INT64, [1], [0])),
        order,
        positions,
        axis=0,
    )
    gathered = one("Gather", merged, inverse, axis=0)
    nodes.append(
        helper.make_node(
            "Reshape",
            [gathered, one("Concat", batch, per_image, tail, axis=0)],
            ["pooled"],
            allowzero=1,
        )
    )  # R may be 0

    function = helper.make_function(
        DOMAIN,
        ROI_ALIGN_OP,
        ["rois", *features],
        ["pooled"],
        nodes,
        opset_imports=[helper.make_opsetid("", opset)],
        attributes=list(ROI_ALIGN_ATTRIBUTES),
        doc_string="Multi-level RoIAlign (maskrt's plugins/roi_align/README.md): torchvision's FPN "
        "level of each RoI, then torchvision's roi_align on that level. rois [B, R, 4] float32 "
        "canvas pixels; features_l [B, C, H_l, W_l]; pooled [B, R, C, P, P].",
    )
    return function


# ---------------------------------------------------------------------------------------------
# translations for torch.onnx.export(dynamo=True, custom_translation_table=...)


def _roi_align_schema(num_levels: int) -> onnx.defs.OpSchema:
    # one input per level rather than a variadic one: the exporter's variadic binding also passes
    # the inputs before the variadic parameter (torch 2.14)
    param = onnx.defs.OpSchema.FormalParameter
    return onnx.defs.OpSchema(
        ROI_ALIGN_OP,
        DOMAIN,
        DOMAIN_VERSION,
        inputs=[param("rois", "T1"), *(param(f"features_{i}", "T") for i in range(num_levels))],
        outputs=[param("pooled", "T")],
        type_constraints=[
            ("T1", ["tensor(float)"], "RoIs"),
            ("T", ["tensor(float)", "tensor(float16)"], "features"),
        ],
        attributes=[
            onnx.defs.OpSchema.Attribute(name, onnx.defs.OpSchema.AttrType.INT, "")
            for name in ROI_ALIGN_ATTRIBUTES
        ],
    )


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(dynamo=True)``."""
    import onnxscript
    import torch
    from onnxscript.values import Op, Opset

    # onnxscript types each op input by its ONNX type constraint; the traced values carry none
    op: Any = onnxscript.opset18

    import maskrt.model.deploy  # noqa: F401  (registers torch.ops.maskrt.grouped_nms)
    from maskrt.model.roi_align import CANONICAL_LEVEL, CANONICAL_SCALE, FIRST_LEVEL

    def multilevel_roi_align(
        rois,
        features,
        output_size: int,
        sampling_ratio: int,
        aligned: bool,
        canonical_scale: int = CANONICAL_SCALE,
        canonical_level: int = CANONICAL_LEVEL,
        first_level: int = FIRST_LEVEL,
    ):
        roi_align_op = Op(
            Opset(DOMAIN, DOMAIN_VERSION), ROI_ALIGN_OP, _roi_align_schema(len(features))
        )
        return roi_align_op(
            rois,
            *features,
            output_size=int(output_size),
            sampling_ratio=int(sampling_ratio),
            aligned=int(bool(aligned)),
            canonical_scale=int(canonical_scale),
            canonical_level=int(canonical_level),
            first_level=int(first_level),
        )

    def grouped_nms(
        boxes, scores, iou_threshold: float, score_threshold: float, max_per_group: int
    ):
        selected = op.NonMaxSuppression(
            boxes,
            op.Unsqueeze(scores, [1]),
            op.Constant(value_ints=[int(max_per_group)]),
            op.Constant(value_floats=[float(iou_threshold)]),
            op.Constant(value_floats=[float(score_threshold)]),
        )
        index = op.Gather(selected, op.Constant(value_ints=[0, 2]), axis=1)  # (group, box)
        ones = op.Expand(op.Constant(value_float=1.0), op.Shape(selected, start=0, end=1))
        keep = op.ScatterND(op.ConstantOfShape(op.Shape(scores)), index, ones)
        return op.Cast(keep, to=TensorProto.BOOL)

    return {
        torch.ops.maskrt.multilevel_roi_align.default: multilevel_roi_align,
        torch.ops.maskrt.grouped_nms.default: grouped_nms,
    }


def add_functions(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Give ``model`` the local function body of every ``MultiLevelRoIAlign`` arity it uses."""
    arities = sorted(
        {
            len(n.input) - 1
            for n in all_nodes(model.graph)
            if n.domain == DOMAIN and n.op_type == ROI_ALIGN_OP
        }
    )
    if len(arities) > 1:
        raise ValueError(f"{ROI_ALIGN_OP} is called with different numbers of levels: {arities}")
    existing = {(f.domain, f.name) for f in model.functions}
    if arities and (DOMAIN, ROI_ALIGN_OP) not in existing:
        model.functions.append(multilevel_roi_align_function(arities[0], opset))
    if arities and not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return model


def all_nodes(graph: onnx.GraphProto | onnx.FunctionProto):
    """Every node of a graph or function body, those of its subgraphs (If/Loop branches) included."""
    for n in graph.node:
        yield n
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(a.g)
            for g in a.graphs:
                yield from all_nodes(g)


def drop_default_reductions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove ``reduction="none"`` (ONNX's default) from every ``ScatterND`` / ``ScatterElements``
    of ``model`` and its functions: the exporter writes it, and TensorRT 10.0-10.6's ONNX parser
    rejects the attribute whenever it is present."""
    bodies = [model.graph, *model.functions]
    for body in bodies:
        for node in all_nodes(body):
            if node.op_type in ("ScatterND", "ScatterElements"):
                kept = [a for a in node.attribute if not (a.name == "reduction" and a.s == b"none")]
                del node.attribute[:]
                node.attribute.extend(kept)
    return model
