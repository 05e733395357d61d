"""JAX 0.10 with its CUDA 13 plugin (jax[cuda13]: jax-cuda13-plugin, PJRT, cuBLAS 13.10,
cuDNN 9.28, CUPTI 13.5) on a simulated H100, in the jax stack environment (tests/stack_envs.py).

JAX falls back to the CPU with only a warning when its CUDA plugin cannot start, so every
client first checks that its default backend is the GPU. Kernels are recorded, not computed:
the tests check start-up, exact device_put round trips, compilation with XLA's default
autotuning, kernels in vgpud's launch log, and no error or crash."""

from __future__ import annotations

from tests.stack_envs import answer

VGPUD_GPUS = "h100"  # the vgpud fixture's GPUs (tests/conftest.py)

PROLOGUE = """
import json, os
import numpy as np
import jax
import jax.numpy as jnp
out = {"pid": os.getpid(), "version": jax.__version__, "backend": jax.default_backend(),
       "devices": [[d.platform, d.device_kind] for d in jax.devices()]}
assert out["backend"] == "gpu", f"JAX fell back to {out['backend']}"
rng = np.random.default_rng(5)
"""


def run(vgpud, tmp_path, body: str) -> dict:
    out = answer("jax", PROLOGUE + body + "\nprint(json.dumps(out))\n", vgpud, tmp_path, timeout=600)
    assert out["version"].startswith("0.10") and out["devices"] == [["gpu", "NVIDIA H100 80GB HBM3"]], out
    return out


def test_devices_and_exact_device_put(vgpud, tmp_path):
    """Each round trip carries new bytes, so a read that overtakes its copy shows as stale data."""
    out = run(vgpud, tmp_path, """
out["memory"] = jax.devices()[0].memory_stats() is not None
exact = 0
for size in rng.integers(1, 1 << 18, 200):
    data = rng.integers(0, 256, size, dtype=np.uint8)
    exact += bool((np.asarray(jax.device_put(data)) == data).all())
out["exact_round_trips"] = exact
floats = rng.standard_normal((512, 512)).astype(np.float32)
out["float_round_trip"] = bool((np.asarray(jax.device_put(floats)) == floats).all())
""")
    assert out["exact_round_trips"] == 200 and out["float_round_trip"]


def test_jit_matmul_and_grad_with_default_autotuning(vgpud, tmp_path):
    out = run(vgpud, tmp_path, """
assert "autotune" not in os.environ.get("XLA_FLAGS", "")
x = jax.device_put(rng.standard_normal((256, 512)).astype(np.float32))
w = jax.device_put(rng.standard_normal((512, 128)).astype(np.float32))
scaled = jax.jit(lambda v: v * 2.0 + 1.0)(x).block_until_ready()
product = jax.jit(jnp.matmul)(x, w).block_until_ready()
half = jax.jit(jnp.matmul)(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)).block_until_ready()
gradient = jax.jit(jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w))))(w).block_until_ready()
out["shapes"] = [list(scaled.shape), list(product.shape), list(half.shape), list(gradient.shape)]
out["dtypes"] = [str(half.dtype), str(gradient.dtype)]
""")
    assert out["shapes"] == [[256, 512], [256, 128], [256, 128], [512, 128]]
    assert out["dtypes"] == ["bfloat16", "float32"]
    assert vgpud.control("launches", pid=out["pid"])["launches"], "XLA's kernels reach vgpud's launch log"
