"""C clients built for the tests: NVML the way ggml (Ollama, llama.cpp) uses it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vgpu.device.gpuset import parse

HERE = Path(__file__).parent / "clients"


@pytest.fixture(scope="module")
def ggml_nvml(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("clients") / "ggml_nvml"
    subprocess.run(["cc", "-O1", "-o", str(binary), str(HERE / "ggml_nvml.c"), "-ldl", "-lpthread"], check=True)
    return binary


def test_ggml_style_queries_from_short_lived_threads(vgpud, ggml_nvml):
    uuid = parse("2xh100,l4,rtx4090").gpus[2].uuid
    result = subprocess.run([str(ggml_nvml), uuid, "50"], env=vgpud.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rounds, *name, total, fds_before, fds_after = result.stdout.split()
    assert int(rounds) == 50 and " ".join(name) == "NVIDIA L4" and int(total) == 23034
    assert int(fds_after) <= int(fds_before), "each round's connection is closed, none leaks"
