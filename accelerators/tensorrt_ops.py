"""What TensorRT 10.0's ONNX parser handles natively, to check exported graphs without a GPU.

Source: the operator support matrix of onnx-tensorrt for TensorRT 10.0 (docs/operators.md in
github.com/onnx/onnx-tensorrt, release/10.0): opsets 9 to 20; operators marked supported, with
the restriction that matters to livediff's graphs noted below. An op outside this set, or a
restricted attribute value, would need a plugin or fail to parse: `unsupported_ops` lists them.
"""
from __future__ import annotations

MIN_OPSET, MAX_OPSET = 9, 20

NATIVE_OPS = frozenset("""
Abs Acos Acosh Add AffineGrid And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
BlackmanWindow Cast CastLike Ceil Celu Clip Compress Concat Constant ConstantOfShape Conv ConvTranspose Cos
Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization HammingWindow HannWindow HardSigmoid HardSwish Hardmax
Identity If InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less LessOrEqual Log
LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul
Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad Pow QuantizeLinear RNN RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RoiAlign Round
Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
Unsqueeze Upsample Where Xor
""".split())

#: attribute values TensorRT 10.0 parses only through a plugin (op → attribute → native values)
NATIVE_ATTRIBUTES = {
    "ScatterElements": ("reduction", {b"none", "none"}),
    "ScatterND": ("reduction", {b"none", "none"}),
}


def unsupported_ops(model) -> list[str]:
    """`op` or `op(attribute=value)` for every node of an ONNX model (and its subgraphs) that
    TensorRT 10.0 does not parse natively, plus an opset outside 9..20."""
    problems = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        problems.append(f"opset {opset}")

    def visit(graph) -> None:
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in NATIVE_OPS:
                problems.append(f"{node.domain + '.' if node.domain else ''}{node.op_type}")
            restriction = NATIVE_ATTRIBUTES.get(node.op_type)
            for attribute in node.attribute:
                if restriction and attribute.name == restriction[0] and attribute.s not in restriction[1]:
                    problems.append(f"{node.op_type}({attribute.name}={attribute.s.decode()})")
                if attribute.g is not None and attribute.g.node:
                    visit(attribute.g)

    visit(model.graph)
    return sorted(set(problems))
