"""ONNX Runtime 1.31's CUDA execution provider (onnxruntime-gpu with its CUDA 13 and cuDNN 9.28
wheels) on a simulated H100, in the cupy-onnxruntime stack environment (tests/stack_envs.py).

ONNX Runtime falls back to the CPU without failing when its CUDA provider cannot start, so the
tests confirm the session's provider list. Kernels are recorded, not computed: the session's
outputs are not checked, its inputs' copies are."""

from __future__ import annotations

from tests.stack_envs import run_client

VGPUD_GPUS = "h100"  # the vgpud fixture's GPUs (tests/conftest.py)

#: a small model made with the onnx package: relu(x @ w + b) and a 3x3 convolution
SCRIPT = """
import json, os
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort

rng = np.random.default_rng(3)
weights = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
bias = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
kernel = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "k")
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["sum"]),
     helper.make_node("Relu", ["sum"], ["y"]), helper.make_node("Conv", ["image", "k"], ["features"], pads=[1, 1, 1, 1])],
    "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 64]),
              helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 16, 16])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 32]),
     helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, 16, 16])],
    initializer=[weights, bias, kernel])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 10
onnx.checker.check_model(model)

# the CUDA and cuDNN libraries of the nvidia wheels, loaded as ONNX Runtime's documentation says
ort.preload_dlls()
out = {"pid": os.getpid(), "version": ort.__version__, "available": ort.get_available_providers()}
options = ort.SessionOptions()
options.log_severity_level = 2
session = ort.InferenceSession(model.SerializeToString(), options, providers=["CUDAExecutionProvider"])
out["providers"] = session.get_providers()
x = rng.standard_normal((8, 64)).astype(np.float32)
image = rng.standard_normal((1, 1, 16, 16)).astype(np.float32)
y, features = session.run(None, {"x": x, "image": image})
out["shapes"] = [list(y.shape), list(features.shape)]

on_gpu = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
out["value_device"] = on_gpu.device_name()
out["round_trip"] = bool((on_gpu.numpy() == x).all())
print(json.dumps(out))
"""


def test_cuda_provider_creates_and_runs_a_session(vgpud, tmp_path):
    result = run_client("cupy-onnxruntime", SCRIPT, vgpud, tmp_path)
    assert result.returncode == 0, result.explain()
    out = result.answer
    assert out["version"].startswith("1.31") and "CUDAExecutionProvider" in out["available"]
    assert out["providers"][0] == "CUDAExecutionProvider", f"the CUDA provider did not start: {result.explain()}"
    assert out["shapes"] == [[8, 32], [1, 4, 16, 16]]
    assert out["value_device"] == "cuda" and out["round_trip"], "an OrtValue on the GPU copies back exactly"
    assert vgpud.control("launches", pid=out["pid"])["launches"], "the session's kernels reach vgpud's launch log"
