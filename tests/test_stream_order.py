"""Stream order under load: every operation on a stream completes before the next one starts
and before a synchronisation returns, whichever thread issued it (tests/clients/stream_order.c:
randomised copies in every direction, memsets, host functions and callbacks, events, across
streams and threads, checked against a model kept on the host)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from vgpu import launcher
from vgpu.api.extract import find_header

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
CLIENTS = Path(__file__).parent / "clients"


@pytest.fixture(scope="module")
def stream_order(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("clients") / "stream_order"
    subprocess.run(["cc", "-O1", "-o", str(binary), str(CLIENTS / "stream_order.c"), f"-I{find_header('cuda').parent}",
                    str(launcher.library_path("libvgpu-cuda.so")), "-lpthread"], check=True)
    return binary


@pytest.mark.parametrize("seed, threads, steps", [(1, 1, 3000), (2, 4, 1500), (3, 8, 800)])
def test_every_stream_operation_completes_before_the_next(vgpud, stream_order, seed, threads, steps):
    result = subprocess.run([str(stream_order), str(seed), str(threads), str(steps)], env=vgpud.env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    checks, failures = (int(word) for word in result.stdout.split()[1::2])
    assert failures == 0 and checks > steps * threads // 4, result.stdout
