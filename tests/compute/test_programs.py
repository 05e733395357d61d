"""Whole nvcc programs (cudart, static) computing through vgpud: each reads its inputs from a
file the test writes with numpy, runs its kernels on a simulated H100 and writes its results
back, which the test compares with numpy element by element; failures (assert, an illegal
address) come back as the CUDA error codes a GPU gives, and vgpud carries on."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.compute.corpus_support import assert_equal, assert_same_floats, nvcc

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
VGPUD_GPUS = "2xh100"  # two: the joined mode splits them between two GPU hosts
PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    """program("saxpy") -> tests/compute/programs/saxpy.cu built with nvcc for sm_90 (SASS and
    compute_90 PTX, which vgpud computes), once per module."""
    folder = tmp_path_factory.mktemp("programs")
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        compiler = nvcc()
        if compiler is None:
            pytest.skip("nvcc is not on this machine")
        if name not in built:
            binary = folder / name
            subprocess.run([compiler, "-arch=sm_90", "-cudart=static", "-O2", "-o", str(binary),
                            str(PROGRAMS / f"{name}.cu")], check=True, capture_output=True)
            built[name] = binary
        return built[name]

    return build


def simulator_only(vgpud, why: str) -> None:
    """On the cuda backend a GPU (here a simulator behind vgpu's own driver) runs the kernels in
    the backend's one context per GPU, shared by its clients: a fault there reaches every
    client, and device printf goes to the backend's output, as it would on a real GPU."""
    if vgpud.through == "cuda-backend":
        pytest.skip(f"the cuda backend's GPU runs the kernels: {why}")


def run(binary: Path, env: dict[str, str], *args: object) -> tuple[dict[str, str], str]:
    """Run a program; its "name value" lines, and its whole output."""
    result = subprocess.run([str(binary), *map(str, args)], env=env, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    report = {}
    for line in result.stdout.splitlines():
        name, _, value = line.partition(" ")
        report[name] = value
    return report, output


def assert_steps(report: dict[str, str], output: str, *steps: str) -> None:
    for step in steps:
        assert report.get(step) == "0", f"{step}: {output}"


def test_saxpy(vgpud, program, tmp_path):
    n, a = 3_000_017, 2.0  # a x is exact: the same result whether nvcc fuses a x + y or not
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2, n)).astype(np.float32)
    np.concatenate([x, y]).tofile(tmp_path / "in")
    report, output = run(program("saxpy"), vgpud.env, n, a, tmp_path / "in", tmp_path / "out")
    assert_steps(report, output, "malloc", "h2d", "launch", "d2h", "free")
    got = np.fromfile(tmp_path / "out", np.float32)
    assert_same_floats(got, np.float32(a) * x + y, "saxpy")


def test_reductions(vgpud, program, tmp_path):
    n = 1_000_003
    x = np.random.default_rng(2).uniform(-4, 4, n).astype(np.float32)
    x.tofile(tmp_path / "in")
    report, output = run(program("reduction"), vgpud.env, n, tmp_path / "in", tmp_path / "out")
    assert_steps(report, output, "malloc", "h2d", "memset", "sync", "d2h")
    blocks = -(-n // 256)
    raw = (tmp_path / "out").read_bytes()
    sums = np.frombuffer(raw[:4 * blocks], np.float32)
    total = np.frombuffer(raw[4 * blocks:], np.uint64)[0]
    padded = np.zeros(blocks * 256, np.float32)
    padded[:n] = x
    partial = padded.reshape(blocks, 256)
    s = 128
    while s:
        partial[:, :s] += partial[:, s:2 * s]
        s //= 2
    assert_same_floats(sums, partial[:, 0], "block tree sums")
    scaled = (x * np.float32(1000)).astype(np.int64)  # C's float-to-integer conversion truncates
    assert int(total) == int(scaled.sum()) % 2 ** 64


def test_printf_reaches_stdout_by_the_synchronisation(vgpud, program):
    simulator_only(vgpud, "its printf goes to the backend's output")
    report, output = run(program("printf"), vgpud.env)
    assert_steps(report, output, "sync", "sync2")
    lines = output.splitlines()
    first = [f"kernel step 1 block {b} thread {t}" for b in range(3) for t in (0, 16, 32, 48)]
    second = [f"kernel step 2 block 0 thread {t}" for t in (0, 16)]
    sync_at = lines.index("sync 0")
    assert sorted(lines[:sync_at]) == sorted(first), output
    assert sorted(lines[sync_at + 1:lines.index("sync2 0")]) == sorted(second), output


def test_device_assert_is_error_710_and_sticky(vgpud, program):
    simulator_only(vgpud, "a fault stays in the backend's shared context")
    report, output = run(program("assert"), vgpud.env)
    assert_steps(report, output, "malloc", "h2d", "launch")
    assert report["sync"] == "710" and report["last"] == "710", output  # cudaErrorAssert
    assert report["after"] == "710", output  # the context is unusable from then on, as on a GPU


def test_illegal_address_is_700_and_vgpud_carries_on(vgpud, program, tmp_path):
    simulator_only(vgpud, "a fault stays in the backend's shared context")
    report, output = run(program("out_of_bounds"), vgpud.env)
    assert_steps(report, output, "malloc", "launch")
    assert report["sync"] == "700" and report["after"] == "700", output  # cudaErrorIllegalAddress, sticky
    test_saxpy(vgpud, program, tmp_path)  # another process computes on the same vgpud


def test_two_processes_compute_at_once_apart(vgpud, program):
    simulator_only(vgpud, "its clients share one context")
    binary = program("concurrent")
    first = subprocess.Popen([str(binary), "1", "40"], env=vgpud.env, stdout=subprocess.PIPE, text=True)
    address = first.stdout.readline().split()
    while address and address[0] != "address":
        address = first.stdout.readline().split()
    second = subprocess.run([str(binary), "2", "40", address[1]], env=vgpud.env, capture_output=True, text=True,
                            timeout=300)
    rest, _ = first.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0, rest + second.stdout + second.stderr
    assert "wrong 0" in rest.splitlines(), rest
    report = dict(line.split(" ", 1) for line in second.stdout.splitlines())
    assert report["wrong"] == "0", second.stdout
    # the first process's memory is out of the second's reach: an illegal address, or (where
    # the address also lies in the second's own allocation) the second's own data
    first_pattern = {1 * 1000003 + r + 1 for r in range(40)}  # its element 0 in any round
    assert report["peek"] in ("0", "700"), second.stdout
    if report["peek"] == "0":
        assert int(report["peeked"]) not in first_pattern, second.stdout


def test_graph_replays_compute(vgpud, program, tmp_path):
    n, replays = 5000, 4
    x = np.random.default_rng(3).integers(-1000, 1000, n).astype(np.int32)
    x.tofile(tmp_path / "in")
    report, output = run(program("graph"), vgpud.env, n, replays, tmp_path / "in", tmp_path / "out")
    assert_steps(report, output, "malloc", "h2d", "memset", "stream", "begin", "end", "instantiate", "replays",
                 "sync", "d2h")
    got = np.fromfile(tmp_path / "out", np.int32)
    want = x.copy()
    for _ in range(replays):
        want = want * 3 + np.arange(n, dtype=np.int32)
    assert_equal(got[:n], want, "graph replays")
    assert got[n] == replays
