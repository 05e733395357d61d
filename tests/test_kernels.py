"""Kernels on the simulated GPU: code images, launches checked as a real driver checks them
(answers compared with a real H200's), recorded launches, NVRTC through cuda-python, and
PyTorch's kernels."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import lz4.block
import pytest

from tests.conftest import CUDA_LIB, run_json, run_python
from tests.test_cudart import NVCC
from vgpu.images import NoBinaryForGpu, PtxTooNew, read_image
from vgpu.images.fatbin import ENTRY, FLAG_COMPRESSED_LZ4, HEADER

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)
CLIENTS = Path(__file__).parent / "clients"
DATA = Path(__file__).parent / "data"
#: what tests/clients/kernel_checks.cu printed on an NVIDIA H200 (driver 580.159.04, CUDA 13.0
#: cudart), run with the images built by images() below
REAL_H200 = DATA / "h200_kernel_checks.txt"


def nvcc(*args: str) -> None:
    if NVCC is None:
        pytest.skip("nvcc is not on this machine")
    subprocess.run([NVCC, *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """The kernel_checks program and images for other architectures, built with nvcc."""
    folder = tmp_path_factory.mktemp("kernels")
    source = str(CLIENTS / "kernel_checks.cu")
    built = {name: folder / name for name in ("kernel_checks", "sm80_only.fatbin", "sm80.cubin", "sm100.ptx",
                                               "sm90.cubin", "sm90.ptx", "mixed.fatbin")}
    nvcc("-gencode", "arch=compute_89,code=sm_89", "-gencode", "arch=compute_90,code=[sm_90,compute_90]",
         "-o", str(built["kernel_checks"]), source)
    nvcc("-fatbin", "-gencode", "arch=compute_80,code=sm_80", "-o", str(built["sm80_only.fatbin"]), source)
    nvcc("-cubin", "-arch=sm_80", "-o", str(built["sm80.cubin"]), source)
    nvcc("-cubin", "-arch=sm_90", "-o", str(built["sm90.cubin"]), source)
    nvcc("-ptx", "-arch=sm_90", "-o", str(built["sm90.ptx"]), source)
    built["sm100.ptx"].write_text(built["sm90.ptx"].read_text().replace(".target sm_90", ".target sm_100"))
    nvcc("-fatbin", "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=compute_90",
         "-Xfatbin", "-compress-all", "-o", str(built["mixed.fatbin"]), source)
    return built


# ---- images ------------------------------------------------------------------------------


def test_cubin_and_ptx_agree_on_the_parameter_layout(images):
    cubin = read_image(images["sm90.cubin"].read_bytes()).module_for(90)
    ptx = read_image(images["sm90.ptx"].read_bytes()).module_for(90)
    assert cubin.kind == "cubin" and ptx.kind == "ptx"
    many = next(name for name in cubin.kernels if name.startswith("_Z4many"))
    # char, short, int, long long, float, double, struct Big (48 bytes, 8-aligned), pointer
    layout = [(0, 1), (2, 2), (4, 4), (8, 8), (16, 4), (24, 8), (32, 48), (80, 8)]
    assert [(p.offset, p.size) for p in cubin.kernels[many].params] == layout
    assert [(p.offset, p.size) for p in ptx.kernels[many].params] == layout
    assert cubin.kernels[many].max_threads == ptx.kernels[many].max_threads == 128
    assert cubin.kernels[many].shared_bytes == ptx.kernels[many].shared_bytes == 256
    assert cubin.globals["counter"].initial == struct.pack("<i", 42)
    assert ptx.globals["counter"].initial == struct.pack("<i", 42)
    assert cubin.globals["table"].initial[:12] == struct.pack("<3f", 1, 2, 3) and cubin.globals["table"].constant


def test_ptx_register_estimates_are_near_what_ptxas_allocates(tmp_path):
    """A PTX kernel's register count is an estimate (the driver would compile it first): for
    the compute corpus's kernels it stays within 16 of ptxas's allocation for sm_90, and no
    kernel ptxas fits in 32 registers is estimated above 64 (a 1,024-thread block fits)."""
    import re

    from vgpu.images.ptx import read_ptx

    source = Path(__file__).parent / "compute" / "kernels" / "elementwise.cu"
    ptx = tmp_path / "k.ptx"
    nvcc("-ptx", "-arch=compute_90", "-O3", "-o", str(ptx), str(source))
    usage = subprocess.run([NVCC, "-cubin", "-arch=sm_90", "-O3", "--resource-usage", "-o", str(tmp_path / "k.cubin"),
                            str(source)], capture_output=True, text=True, check=True).stderr
    allocated, kernel = {}, None
    for line in usage.splitlines():
        named = re.search(r"(?:Compiling entry function|Function properties for) '?(\w+)", line)
        kernel = named.group(1) if named else kernel
        used = re.search(r"Used (\d+) registers", line)
        if used and kernel:
            allocated[kernel] = int(used.group(1))
    estimates = {name: k.registers for name, k in read_ptx(ptx.read_bytes()).kernels.items()}
    assert set(allocated) == set(estimates) and len(estimates) >= 10
    for name, registers in allocated.items():
        assert abs(estimates[name] - registers) <= 16, (name, estimates[name], registers)
        assert registers > 32 or estimates[name] <= 64, (name, estimates[name], registers)


def test_fat_binary_choice_follows_the_device(images):
    image = read_image(images["mixed.fatbin"].read_bytes())
    assert image.compressed and image.architectures == ["sm_80", "compute_90"]
    assert (image.module_for(80).kind, image.module_for(86).kind) == ("cubin", "cubin")  # same major, not newer
    assert image.module_for(90).kind == "ptx"  # compiled for the device from PTX
    with pytest.raises(NoBinaryForGpu):
        image.module_for(75)
    with pytest.raises(PtxTooNew):
        read_image(images["sm100.ptx"].read_bytes()).module_for(90)


def test_lz4_compressed_entries(images):
    """CUDA 11 and 12 compress fat binary entries with LZ4 (flag 0x2000): re-pack the sm_80
    cubin that way and read it back."""
    cubin = images["sm80.cubin"].read_bytes()
    packed = lz4.block.compress(cubin, store_size=False)
    entry = ENTRY.pack(2, 0x101, ENTRY.size, len(packed), len(packed), 0, 0, 0, 80, 0, 0, FLAG_COMPRESSED_LZ4 | 0x11,
                       0, len(cubin))
    fatbin = HEADER.pack(0xBA55ED50, 1, HEADER.size, ENTRY.size + len(packed)) + entry + packed
    image = read_image(fatbin)
    assert image.compressed
    assert any(name.startswith("_Z4many") for name in image.module_for(80).kernels)
    # nvcc pads each payload to 8 bytes; the compressed stream is its first "compressed size" bytes
    padding = b"\0" * (8 - len(packed) % 8 or 8)
    entry = ENTRY.pack(2, 0x101, ENTRY.size, len(packed) + len(padding), len(packed), 0, 0, 0, 80, 0, 0,
                       FLAG_COMPRESSED_LZ4 | 0x11, 0, len(cubin))
    padded = HEADER.pack(0xBA55ED50, 1, HEADER.size, ENTRY.size + len(packed) + len(padding)) + entry + packed + padding
    assert any(name.startswith("_Z4many") for name in read_image(padded).module_for(80).kernels)


# ---- the driver's answers, against a real GPU's ---------------------------------------------

def run_kernel_checks(vgpud, images) -> str:
    env = vgpud.env | {"CUDA_VISIBLE_DEVICES": "0"}  # an H100: Hopper with 132 SMs, as the H200
    names = ["sm80_only.fatbin", "sm80.cubin", "sm100.ptx", "sm90.cubin", "sm90.ptx"]
    result = subprocess.run([str(images["kernel_checks"]), *[str(images[n]) for n in names]], env=env,
                            capture_output=True, text=True, timeout=120)
    return result.stdout + f"rc {result.returncode}\n", result


def test_answers_match_a_real_h200(vgpud, images):
    """Every line kernel_checks prints (launch results, refusals and their codes, function
    attributes, occupancy for 15 block and shared memory combinations, cooperative limits,
    symbols, PTX modules, parameter info, images for other architectures) is what the same
    program printed on a real H200."""
    output, result = run_kernel_checks(vgpud, images)
    expected = REAL_H200.read_text().splitlines()
    got = output.splitlines()
    assert len(got) == len(expected), result.stderr
    mismatches = [(e, g) for e, g in zip(expected, got) if e != g]
    assert not mismatches, mismatches


def test_launches_are_recorded_with_their_arguments(vgpud, images):
    _, result = run_kernel_checks(vgpud, images)
    assert result.returncode == 0
    reply = vgpud.control("launches")
    computed = vgpud.through == "cuda-backend"  # (on the simulator through that backend)
    assert reply["computed"] and ("durations are not measured" if computed else "computes each launch whose module "
                                  "carries PTX") in reply["note"]
    if not computed:  # each launch says whether its results were computed, and why not
        outcomes = [launch["compute"] for launch in reply["launches"]]
        assert all(o["status"] in ("computed", "failed") or o["status"] == "not computed" and o["reason"]
                   for o in outcomes), outcomes
    mine = [launch for launch in reply["launches"] if launch["kernel"].startswith("_Z4many")]
    assert mine, reply["launches"][-5:]
    first_three = mine[:3]
    assert [launch["grid"] for launch in first_three] == [[2, 1, 1], [3, 1, 1], [4, 1, 1]]
    assert all(launch["block"] == [128, 1, 1] and launch["shared_bytes"] == 512 for launch in first_three)
    assert len({launch["stream"] for launch in first_three}) == 3  # three streams
    args = bytes.fromhex(first_three[1]["args_hex"])
    assert len(args) == 88
    c, s, i, l, f, d = struct.unpack_from("<bxhiqf4xd", args)
    assert (c, s, i, l, f, d) == (8, -3, 1001, 1 << 40, 0.5, 2.25)
    assert struct.unpack_from("<5di", args, 32) == (1.0, 2.0, 3.0, 4.0, 5.0, 6)
    empty = next(launch for launch in reply["launches"] if launch["kernel"] == "_Z5emptyv")
    assert empty["grid"] == [3, 2, 1] and empty["block"] == [8, 4, 2] and empty["args_size"] == 0
    assert all(launch["duration_us"] > 0 if not computed else launch["duration_us"] == 0 for launch in mine)
    assert reply["counts"][str(first_three[0]["pid"])] >= len(mine)


def test_vgpu_launches_command(vgpud, images):
    run_kernel_checks(vgpud, images)
    env = vgpud.env | {"COLUMNS": "200"}
    table = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "launches", "--last", "3"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    note = "results are real" if vgpud.through == "cuda-backend" else "computes each launch"
    assert "3 kernel launches" in table.stdout and note in table.stdout
    as_json = subprocess.run([sys.executable, "-m", "vgpu.cli.main", "launches", "--json", "--pid", "1"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert json.loads(as_json.stdout)["launches"] == []


# ---- other clients ----------------------------------------------------------------------------

def test_nvrtc_kernel_through_cuda_python(vgpud):
    """A kernel compiled at run time (NVRTC, PyPI nvidia-cuda-nvrtc) for the device's
    architecture, loaded as a cubin, launched and recorded with its packed arguments."""
    result = subprocess.run([sys.executable, str(CLIENTS / "nvrtc_saxpy.py")], env=vgpud.env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["arch"] == 90
    assert report["params"] == [[0, 4], [8, 8], [16, 8], [24, 4]]
    launch = [x for x in vgpud.control("launches")["launches"] if x["kernel"] == "saxpy"][-1]
    a, x, y, n = struct.unpack("<f4xQQi", bytes.fromhex(launch["args_hex"]))
    assert (a, x, y, n) == (2.5, report["x"], report["y"], 1024)
    assert launch["grid"] == [4, 1, 1] and launch["block"] == [256, 1, 1] and launch["stream"] >= 4096


def test_pytorch_kernels_and_a_matmul_through_cublas(vgpud):
    """The issue's own command: elementwise kernels, a reduction and a matmul through cuBLAS
    (cuBLASLt's heuristics pick a kernel, as on a real H200), each launch recorded by name."""
    code = """
import json, os, torch
a = torch.ones(1024, 1024, device="cuda")
b = (a * 2 + 1).sum()
c = a @ a
torch.cuda.synchronize()
handle = torch.cuda.current_blas_handle()
print(json.dumps({"pid": os.getpid(), "handle": handle != 0}))
"""
    result = run_python(code, vgpud.env | {"CUDA_VISIBLE_DEVICES": "0"}, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["handle"]
    names = [x["kernel"] for x in vgpud.control("launches", pid=report["pid"])["launches"]]
    assert any("elementwise_kernel" in name for name in names), names
    assert any("reduce_kernel" in name for name in names), names
    assert any("gemm" in name for name in names), names


def test_cublas_and_cublaslt_program(vgpud, tmp_path):
    """A program linked with cuBLAS and cuBLASLt from the nvidia-cublas wheel: a handle on a
    stream and an SGEMM; cuBLASLt's own handle, heuristic and matmul (cuBLAS asks for the
    21318c60 private table's context number on the way)."""
    import nvidia.cu13

    wheel = Path(nvidia.cu13.__path__[0])
    binary = tmp_path / "cublas_sgemm"
    nvcc("-arch=sm_90", f"-I{wheel / 'include'}", "-o", str(binary), str(CLIENTS / "cublas_sgemm.cu"),
         f"-L{wheel / 'lib'}", "-l:libcublas.so.13", "-l:libcublasLt.so.13")
    env = vgpud.env | {"CUDA_VISIBLE_DEVICES": "0"}
    env["LD_LIBRARY_PATH"] = f"{env['LD_LIBRARY_PATH']}:{wheel / 'lib'}"
    process = subprocess.Popen([str(binary)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=120)
    report = dict(line.split(" ", 1) for line in out.splitlines())
    assert report.pop("lt_found") == "1", out + err
    assert set(report.values()) == {"0"}, out + err
    assert set(report) >= {"sgemm", "set_stream", "lt_heuristic", "lt_matmul"}
    launches = vgpud.control("launches", pid=process.pid)["launches"]
    assert len([x["kernel"] for x in launches if "gemm" in x["kernel"]]) >= 2, launches


# ---- virtual memory, stream capture and graphs ------------------------------------------------

REAL_H200_FACTS = DATA / "h200_driver_facts.txt"
#: lines of driver_facts the simulator models rather than matches: the persisting L2 size (an
#: H200 figure), cluster occupancy (the GPC layout is not public) and the private tables cuBLAS
#: and the tools ask for (not served)
MODELLED = ("limit_6 ", "clusters_", "table_")


@pytest.fixture(scope="module")
def driver_facts(tmp_path_factory) -> Path:
    binary = tmp_path_factory.mktemp("facts") / "driver_facts"
    nvcc("-gencode", "arch=compute_89,code=sm_89", "-gencode", "arch=compute_90,code=[sm_90,compute_90]",
         "-o", str(binary), str(CLIENTS / "driver_facts.cu"))
    return binary


def test_vmm_capture_and_graphs_match_a_real_h200(vgpud, driver_facts):
    """Virtual memory management (granularity, reserve, create, map, access, contents across
    two mappings, a kernel on a mapping, address ranges, partial unmaps, release while mapped),
    limits, stream capture (the legacy stream refused, a synchronisation spoiling a capture,
    node counts), instantiation, replays, executable graph updates and graphs built node by
    node: each answer as a real H200 gave it."""
    result = subprocess.run([str(driver_facts)], env=vgpud.env | {"CUDA_VISIBLE_DEVICES": "0"}, capture_output=True,
                            text=True, timeout=120)
    got = (result.stdout + f"rc {result.returncode}\n").splitlines()
    expected = REAL_H200_FACTS.read_text().splitlines()
    assert [line.split(" ")[0] for line in got] == [line.split(" ")[0] for line in expected], result.stderr
    mismatches = [(e, g) for e, g in zip(expected, got) if e != g and not e.startswith(MODELLED)]
    assert not mismatches, mismatches
    launches = [x for x in vgpud.control("launches")["launches"] if x["kernel"] == "_Z4fillPii"]
    graph = [x for x in launches if x["graph"]]
    # three replays of a captured graph with two kernels, then a built graph with two
    assert len(graph) == 3 * 2 + 2, [(x["grid"], x["graph"]) for x in launches]
    assert [x["grid"][0] for x in graph[:6]] == [2, 4] * 3


def test_pytorch_cuda_graph_capture_and_replay(vgpud):
    code = """
import json, os, torch
x = torch.ones(1024, device="cuda")
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    y = x * 2 + 1
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 3 + 1
for _ in range(3):
    g.replay()
torch.cuda.synchronize()
print(json.dumps({"pid": os.getpid()}))
"""
    result = run_python(code, vgpud.env | {"CUDA_VISIBLE_DEVICES": "0"}, timeout=180)
    assert result.returncode == 0, result.stderr
    pid = json.loads(result.stdout.splitlines()[-1])["pid"]
    launches = vgpud.control("launches", pid=pid)["launches"]
    replayed = [x for x in launches if x["graph"]]
    assert len(replayed) == 3 * 2 and all("elementwise_kernel" in x["kernel"] for x in replayed)


# ---- ggml-style discovery ------------------------------------------------------------------

def test_ggml_style_discovery_in_a_short_lived_child(vgpud, tmp_path):
    """How Ollama and llama.cpp find GPUs: a child whose LD_LIBRARY_PATH starts with a bundle
    folder dlopens a backend library with libcuda.so.1, cudart and cuBLAS as DT_NEEDED
    entries; it reports each simulated GPU's name, UUID (found again through NVML's
    nvmlDeviceGetHandleByUUID), compute capability, VMM support and free memory, creates a
    cuBLAS handle and makes a VMM allocation, as ggml-cuda does."""
    import nvidia.cu13

    from vgpu import launcher

    if not (CUDA_LIB / "libcudart.so.13").exists():
        pytest.skip("cudart 13 is not on this machine")
    wheel = Path(nvidia.cu13.__path__[0])
    bundle = tmp_path / "lib" / "ollama" / "cuda_v13"
    bundle.mkdir(parents=True)
    (bundle / "libcudart.so.13").symlink_to(CUDA_LIB / "libcudart.so.13")
    for name in ("libcublas.so.13", "libcublasLt.so.13"):
        (bundle / name).symlink_to(wheel / "lib" / name)
    (bundle / "libcuda.so.1").symlink_to(launcher.library_path("libvgpu-cuda.so"))
    sources = CLIENTS / "ggml_discovery"
    includes = [f"-I{CUDA_LIB.parent / 'include'}", f"-I{wheel / 'include'}"]
    subprocess.run(["cc", "-shared", "-fPIC", *includes, "-o", str(bundle / "libggml-cuda.so"),
                    str(sources / "backend.c"), f"-L{bundle}", "-l:libcudart.so.13", "-l:libcublas.so.13",
                    "-l:libcuda.so.1", "-ldl"], check=True)
    runner = tmp_path / "runner"
    subprocess.run(["cc", "-o", str(runner), str(sources / "runner.c"), "-ldl"], check=True)
    needed = subprocess.run(["readelf", "-d", str(bundle / "libggml-cuda.so")], capture_output=True,
                            text=True).stdout
    assert all(f"[{lib}]" in needed for lib in ("libcuda.so.1", "libcudart.so.13", "libcublas.so.13"))
    env = dict(vgpud.env)
    # the bundle first, as Ollama's server sets it for its runners; NVML comes from the system
    # library folder (vgpu's links stand for it here)
    env["LD_LIBRARY_PATH"] = f"{bundle}:{launcher.link_dir()}"
    result = subprocess.run([str(runner)], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    devices = [json.loads(line) for line in result.stdout.splitlines()]
    gpus = vgpud.gpus
    assert [d["name"] for d in devices] == [g.profile.name for g in gpus]
    assert [d["uuid"] for d in devices] == [g.uuid for g in gpus]
    assert [d["compute"] for d in devices] == ["9.0", "9.0", "8.9", "8.9"]
    for device in devices:
        assert device["vmm"] == 1 and device["granularity"] == 2 << 20 and device["vmm_round_trip"] == 1
        assert device["cublas"] == 1 and device["integrated"] == 0
        assert 0 < device["free"] <= device["total"]
        assert device["nvml_free"] > 0, "NVML found the device by the UUID cudart reported"
        assert device["driver"] >= device["runtime"] >= 13000


def test_cudart_interface_module_slot_launch_ex_and_utilisation(vgpud, images):
    """Older runtimes load fat binaries through CUDART_INTERFACE slot 1; cuLaunchKernelEx
    checks cluster attributes; a second of modelled kernel work shows in NVML."""
    fatbin = images["kernel_checks"].parent / "sm90.fatbin"
    nvcc("-fatbin", "-arch=sm_90", "-o", str(fatbin), str(CLIENTS / "kernel_checks.cu"))
    env = vgpud.env | {"CUDA_VISIBLE_DEVICES": "0"}
    result = subprocess.run([sys.executable, str(CLIENTS / "driver_kernels.py"), str(fatbin)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["slot_load"] == 0 and report["get_function"] == 0
    assert report["module_load_file"] == report["module_load_fatbinary"] == 0
    assert report["module_load_missing_file"] == 301  # CUDA_ERROR_FILE_NOT_FOUND
    assert report["ex_cluster"] == 0
    assert report["ex_cluster_uneven"] == 1  # CUDA_ERROR_INVALID_VALUE
    assert report["ex_cooperative"] == 0
    before, after = report["utilization"]
    assert after > before and after >= 30, report


def test_older_cubins_name_their_architecture_in_the_low_byte(images):
    """Before ELF ABI version 8 (CUDA 12.8) a cubin's SM is the low byte of e_flags; cuBLASLt
    13 still loads such cubins."""
    cubin = bytearray(images["sm80.cubin"].read_bytes())
    cubin[8] = 7  # EI_ABIVERSION
    struct.pack_into("<I", cubin, 48, 0x00500550)  # e_flags: EF_CUDA_SM80 | EF_CUDA_VIRTUAL_SM(80)
    assert read_image(bytes(cubin)).architectures == ["sm_80"]


def test_launch_table_shows_readable_kernel_names():
    from vgpu.smi.launches import demangled

    names = demangled(["_Z3addPfS_i", "saxpy"])
    assert names["saxpy"] == "saxpy"
    if shutil.which("c++filt"):
        assert names["_Z3addPfS_i"] == "add(float*, float*, int)"


def test_graph_nodes_are_handed_out(vgpud):
    """cuGraphGetNodes counts a graph's nodes and hands them out (handles an array brings back)."""
    code = """
import json
from cuda.bindings import driver as cu
cu.cuInit(0)
ctx = cu.cuDevicePrimaryCtxRetain(cu.cuDeviceGet(0)[1])[1]
cu.cuCtxSetCurrent(ctx)
graph = cu.cuGraphCreate(0)[1]
first = cu.cuGraphAddEmptyNode(graph, None, 0)[1]
second = cu.cuGraphAddEmptyNode(graph, [first], 1)[1]
third = cu.cuGraphAddEmptyNode(graph, [first, second], 2)[1]
err, nodes, count = cu.cuGraphGetNodes(graph, 3)
_, two, two_count = cu.cuGraphGetNodes(graph, 2)
print(json.dumps({"err": int(err), "count": count, "same": [int(n) for n in nodes] == [int(first), int(second), int(third)],
                  "types": [int(cu.cuGraphNodeGetType(n)[1]) for n in nodes], "two": [two_count, len(two)],
                  "total": cu.cuGraphGetNodes(graph)[2]}))
"""
    report = run_json(code, vgpud.env)
    assert report["err"] == 0 and report["count"] == 3 and report["same"]
    assert report["types"] == [5, 5, 5]  # CU_GRAPH_NODE_TYPE_EMPTY
    assert report["two"] == [2, 2] and report["total"] == 3
