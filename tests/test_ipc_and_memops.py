"""CUDA IPC between processes of one vgpud (memory and events, as torch.multiprocessing uses
them) and stream memory operations (writes, waits and batches in stream order), through
cuda-python, ctypes and PyTorch; contents checked byte for byte, refusals with the real
driver's codes."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import time

import pytest

from tests.conftest import CUDA_PYTHON, run_json
from vgpu.api.manifest import load
from vgpu.device.gpuset import parse
from vgpu.device.memory import InvalidAddress
from vgpu.remote.tokens import Tenant
from vgpu.server.cuda_service import PRIMARY_CONTEXT, CudaService
from vgpu.server.dispatch import Caller
from vgpu.server.state import DaemonState

EVERY_WAY = True  # also through a relay and two joined GPU hosts (conftest)
C = load("cuda").constants


def served_by_simulator(vgpud) -> None:
    """The cuda backend serves neither: its clients all live in vgpud's one process on the real
    driver, which refuses a process its own IPC handles (see docs/cuda.md)."""
    if vgpud.through == "cuda-backend":
        pytest.skip("the cuda backend does not serve CUDA IPC nor stream memory operations")


PRELUDE = CUDA_PYTHON + """
import subprocess, sys
def raw(handle):
    return ctypes.string_at(handle.getPtr(), 64).hex()
def handle_of(kind, text):
    handle = kind()
    ctypes.memmove(handle.getPtr(), bytes.fromhex(text), 64)
    return handle
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))
def read(ptr, n):
    out = bytearray(n); ok(cu.cuMemcpyDtoH(out, ptr, n)); return bytes(out)
"""

#: the importing process: answers one JSON command per line
IMPORTER = PRELUDE + """
opened = {}
for line in sys.stdin:
    cmd = json.loads(line)
    op, reply = cmd["op"], {}
    if op == "open":
        rc, ptr = cu.cuIpcOpenMemHandle(handle_of(cu.CUipcMemHandle, cmd["handle"]), cmd.get("flags", 1))
        reply = {"rc": int(rc), "ptr": int(ptr) if int(rc) == 0 else 0}
    elif op == "read":
        reply = {"data": read(cmd["ptr"], cmd["n"]).hex()}
    elif op == "write":
        ok(cu.cuMemcpyHtoD(cmd["ptr"], bytes.fromhex(cmd["data"]), len(cmd["data"]) // 2))
    elif op == "facts":
        p = cmd["ptr"]
        base, size = ok(cu.cuMemGetAddressRange(p + 5))
        reply = {"range": [int(base), size], "ordinal": ok(cu.cuPointerGetAttribute(
                     cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p)),
                 "free": code(cu.cuMemFree(p)), "export": code(cu.cuIpcGetMemHandle(p))}
    elif op == "close":
        reply = {"rc": code(cu.cuIpcCloseMemHandle(cmd["ptr"]))}
    elif op == "open_event":
        rc, event = cu.cuIpcOpenEventHandle(handle_of(cu.CUipcEventHandle, cmd["handle"]))
        reply = {"rc": int(rc)}
        if int(rc) == 0:
            opened["event"] = event
    elif op == "record_behind_wait":  # NCCL-style: the record waits for a flag in the shared memory
        stream = ok(cu.cuStreamCreate(1))
        ok(cu.cuStreamWaitValue32(stream, cmd["flag"], 1, cu.CUstreamWaitValue_flags.CU_STREAM_WAIT_VALUE_EQ))
        ok(cu.cuMemcpyDtoDAsync(cmd["dst"], cmd["src"], 64, stream))
        ok(cu.cuEventRecord(opened["event"], stream))
        opened["stream"] = stream
        reply = {"query": code(cu.cuStreamQuery(stream))}
    elif op == "sync":
        reply = {"rc": code(cu.cuStreamSynchronize(opened["stream"])), "event": code(cu.cuEventQuery(opened["event"]))}
    elif op == "exit":
        break
    print(json.dumps(reply), flush=True)
"""

IPC = PRELUDE + """
IMPORTER = sys.argv[1]
child = subprocess.Popen([sys.executable, "-c", IMPORTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
def ask(**cmd):
    child.stdin.write(json.dumps(cmd) + "\\n"); child.stdin.flush()
    return json.loads(child.stdout.readline())
out = {}
rng = random.Random(12)
n = 3 << 20
ptr = ok(cu.cuMemAlloc(n))
data = bytes(rng.getrandbits(8) for _ in range(1 << 16)) * 48
ok(cu.cuMemcpyHtoD(ptr, data, n))
handle = raw(ok(cu.cuIpcGetMemHandle(ptr)))
out["same_handle_again"] = raw(ok(cu.cuIpcGetMemHandle(ptr))) == handle
out["interior_pointer"] = raw(ok(cu.cuIpcGetMemHandle(int(ptr) + 4096))) == handle
out["own_open"] = code(cu.cuIpcOpenMemHandle(handle_of(cu.CUipcMemHandle, handle), 1))
out["export_wild"] = code(cu.cuIpcGetMemHandle(0x1234))
forged = []
for at in (2, 9, 40, 63):  # the tag, the address, the secret, the padding
    changed = bytearray(bytes.fromhex(handle)); changed[at] ^= 1
    forged.append(ask(op="open", handle=changed.hex())["rc"])
out["forged"] = forged
out["bad_flags"] = ask(op="open", handle=handle, flags=2)["rc"]
opened = ask(op="open", handle=handle)
out["open"] = [opened["rc"], opened["ptr"] != 0]
p = opened["ptr"]
out["reopen_same_pointer"] = ask(op="open", handle=handle)["ptr"] == p
out["child_reads"] = bytes.fromhex(ask(op="read", ptr=p, n=n)["data"]) == data
ask(op="write", ptr=p + 1000, data="c0ffee" * 100)
out["parent_sees_child_write"] = read(int(ptr) + 1000, 300) == bytes.fromhex("c0ffee" * 100)
ok(cu.cuMemcpyHtoD(int(ptr) + 5000, b"parent", 6))
out["child_sees_parent_write"] = bytes.fromhex(ask(op="read", ptr=p + 5000, n=6)["data"]) == b"parent"
facts = ask(op="facts", ptr=p)
out["facts"] = [facts["range"] == [p, n], facts["ordinal"] == 0, facts["free"], facts["export"]]
# events: only interprocess ones without timing can be shared
plain = ok(cu.cuEventCreate(0))
out["plain_event"] = code(cu.cuIpcGetEventHandle(plain))
timed = ok(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_INTERPROCESS))
out["timed_event"] = code(cu.cuIpcGetEventHandle(timed))
event = ok(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_INTERPROCESS | cu.CUevent_flags.CU_EVENT_DISABLE_TIMING))
event_handle = raw(ok(cu.cuIpcGetEventHandle(event)))
out["own_event_open"] = code(cu.cuIpcOpenEventHandle(handle_of(cu.CUipcEventHandle, event_handle)))
out["forged_event"] = [ask(op="open_event", handle=event_handle[:20] + ("00" if event_handle[20:22] != "00" else "01") +
                              event_handle[22:])["rc"], ask(op="open_event", handle=event_handle[:-2] + "01")["rc"]]
out["open_event"] = ask(op="open_event", handle=event_handle)["rc"]
# the child records the shared event behind a wait for a flag in the shared memory, after a
# copy of the shared memory; the parent's write of the flag lets both go
flag = p + 64
ok(cu.cuMemsetD32(int(ptr) + 64, 0, 1))
behind = ask(op="record_behind_wait", flag=flag, src=p + 4096, dst=p + 8192)
out["child_stream_before_flag"] = behind["query"]
out["parent_event_before_flag"] = code(cu.cuEventQuery(event))
ok(cu.cuMemcpyHtoD(int(ptr) + 4096, b"\\x5a" * 64, 64))
ok(cu.cuStreamWriteValue32(0, int(ptr) + 64, 1, 0))
out["parent_event_after_flag"] = code(cu.cuEventQuery(event))
out["child_after_flag"] = ask(op="sync")
out["copy_behind_wait"] = read(int(ptr) + 8192, 64) == b"\\x5a" * 64
# the exporter frees while the child has it open: the memory stays until the child closes it
ok(cu.cuMemFree(ptr))
out["read_after_exporter_free"] = bytes.fromhex(ask(op="read", ptr=p + 1000, n=6)["data"]).hex()
out["closes"] = [ask(op="close", ptr=p)["rc"], ask(op="close", ptr=p)["rc"], ask(op="close", ptr=p)["rc"]]
out["open_after_free"] = ask(op="open", handle=handle)["rc"]
child.communicate(json.dumps({"op": "exit"}) + "\\n", timeout=10)
print(json.dumps(out))
"""


def test_ipc_memory_and_events_between_processes(vgpud):
    served_by_simulator(vgpud)
    out = run_json(IPC.replace("sys.argv[1]", repr(IMPORTER)), vgpud.env, timeout=120)
    assert out["same_handle_again"] and out["interior_pointer"]
    assert out["own_open"] == C["CUDA_ERROR_INVALID_CONTEXT"], "the real driver refuses a process its own handle"
    assert out["export_wild"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["forged"] == [C["CUDA_ERROR_INVALID_VALUE"]] * 4, "a handle vgpud did not make opens nothing"
    assert out["bad_flags"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["open"] == [0, True] and out["reopen_same_pointer"]
    assert out["child_reads"], "the opener reads the exporter's bytes exactly"
    assert out["parent_sees_child_write"] and out["child_sees_parent_write"], "shared both ways"
    assert out["facts"] == [True, True, C["CUDA_ERROR_INVALID_VALUE"], C["CUDA_ERROR_INVALID_VALUE"]], \
        "opened memory is not the opener's to free or export"
    assert out["plain_event"] == out["timed_event"] == C["CUDA_ERROR_INVALID_VALUE"]
    assert out["own_event_open"] == C["CUDA_ERROR_INVALID_CONTEXT"]
    assert out["forged_event"] == [C["CUDA_ERROR_INVALID_VALUE"]] * 2 and out["open_event"] == 0
    assert out["child_stream_before_flag"] == C["CUDA_ERROR_NOT_READY"]
    assert out["parent_event_before_flag"] == C["CUDA_ERROR_NOT_READY"], "the event's state is shared"
    assert out["parent_event_after_flag"] == 0
    assert out["child_after_flag"] == {"rc": 0, "event": 0}
    assert out["copy_behind_wait"], "the child's copy ran after the parent's write released its wait"
    assert out["read_after_exporter_free"] == "c0ffeec0ffee", "open memory outlives the exporter's free"
    assert out["closes"] == [0, 0, C["CUDA_ERROR_INVALID_VALUE"]], "one close per open"
    assert out["open_after_free"] == C["CUDA_ERROR_INVALID_VALUE"]


def test_ipc_memory_outlives_the_exporting_process(vgpud):
    served_by_simulator(vgpud)
    code = PRELUDE + """
ptr = ok(cu.cuMemAlloc(1 << 20))
ok(cu.cuMemcpyHtoD(int(ptr) + 77, b"kept after exit", 15))
print(raw(ok(cu.cuIpcGetMemHandle(ptr))), flush=True)
sys.stdin.readline()
"""
    exporter = subprocess.Popen([sys.executable, "-c", code], env=vgpud.env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    handle = exporter.stdout.readline().strip()
    importer = subprocess.Popen([sys.executable, "-c", PRELUDE + """
p = ok(cu.cuIpcOpenMemHandle(handle_of(cu.CUipcMemHandle, sys.argv[1]), 1))
print("open", flush=True)
sys.stdin.readline()
print(read(int(p) + 77, 15).decode(), code(cu.cuIpcCloseMemHandle(p)), flush=True)
""", handle], env=vgpud.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert importer.stdout.readline().strip() == "open"
        exporter.communicate("\n", timeout=30)  # the exporting process ends
        answer, _ = importer.communicate("\n", timeout=30)
    finally:
        for process in (exporter, importer):
            process.kill()
    assert answer.strip() == "kept after exit 0"


def test_ipc_open_from_another_device_enables_peer_access(vgpud):
    """CU_IPC_MEM_LAZY_ENABLE_PEER_ACCESS: memory of GPU 0 opened in a context of GPU 1 is
    reached from there, and peer access to GPU 0 counts as enabled, as if asked for."""
    served_by_simulator(vgpud)
    out = run_json(PRELUDE + """
ptr = ok(cu.cuMemAlloc(1 << 16))
ok(cu.cuMemcpyHtoD(ptr, bytes(range(256)) * 256, 1 << 16))
child = subprocess.run([sys.executable, "-c", sys.argv[1]], input=raw(ok(cu.cuIpcGetMemHandle(ptr))),
                       capture_output=True, text=True, timeout=60)
assert child.returncode == 0, child.stderr
print(child.stdout)
""".replace("sys.argv[1]", repr(PRELUDE + """
ctx1 = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(1))))
ok(cu.cuCtxSetCurrent(ctx1))
p = ok(cu.cuIpcOpenMemHandle(handle_of(cu.CUipcMemHandle, sys.stdin.read().strip()), 1))
out = {"contents": read(int(p), 1 << 16) == bytes(range(256)) * 256,
       "ordinal": ok(cu.cuPointerGetAttribute(cu.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, p)),
       "peer": code(cu.cuCtxEnablePeerAccess(ctx, 0)), "close": code(cu.cuIpcCloseMemHandle(p))}
print(json.dumps(out))
""")), vgpud.env)
    assert out == {"contents": True, "ordinal": 0, "peer": C["CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"], "close": 0}


TORCH = """
import hashlib, json, sys, torch, torch.multiprocessing as mp

def child(queue, answers):
    tensor = queue.get()
    answers.put(hashlib.sha256(bytes(tensor.cpu().tolist())).hexdigest())
    tensor[100:116].copy_(torch.arange(16, dtype=torch.uint8))  # a host-to-device copy into it
    torch.cuda.synchronize()
    answers.put("written")
    queue.get()  # the parent has read it

if __name__ == "__main__":
    mp.set_start_method("spawn")
    data = torch.randint(0, 256, (5 << 20,), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    shared = data.cuda()
    queue, answers = mp.Queue(), mp.Queue()
    process = mp.Process(target=child, args=(queue, answers))
    process.start()
    queue.put(shared[4096:])  # a view: the child maps the allocation and finds its offset
    digest = answers.get(timeout=60)
    written = answers.get(timeout=60)
    expected = data.clone(); expected[4096 + 100:4096 + 116] = torch.arange(16, dtype=torch.uint8)
    seen = shared.cpu()
    queue.put("done")
    process.join(60)
    print(json.dumps({"child_read_exactly": digest == hashlib.sha256(bytes(data[4096:].tolist())).hexdigest(),
                      "written": written, "parent_sees_child_write": torch.equal(seen, expected),
                      "exitcode": process.exitcode}))
"""


def test_torch_multiprocessing_shares_a_cuda_tensor(vgpud, tmp_path):
    served_by_simulator(vgpud)
    pytest.importorskip("torch")
    script = tmp_path / "share.py"
    script.write_text(TORCH)
    result = subprocess.run([sys.executable, str(script)], env=vgpud.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "child_read_exactly": True, "written": "written", "parent_sees_child_write": True, "exitcode": 0}


MEMOPS = PRELUDE + """
out = {}
F = cu.CUstreamWaitValue_flags
buf = ok(cu.cuMemAlloc(1 << 20)); b = int(buf)
s1, s2, s3 = (ok(cu.cuStreamCreate(1)) for _ in range(3))
ok(cu.cuStreamWriteValue32(s1, b, 0xDEADBEEF, 0))
ok(cu.cuStreamWriteValue64(s1, b + 8, 0x0123456789ABCDEF,
                           cu.CUstreamWriteValue_flags.CU_STREAM_WRITE_VALUE_NO_MEMORY_BARRIER))
ok(cu.cuStreamSynchronize(s1))
out["written"] = read(b, 16).hex()
out["misaligned"] = [code(cu.cuStreamWriteValue32(s1, b + 2, 1, 0)), code(cu.cuStreamWriteValue64(s1, b + 4, 1, 0)),
                     code(cu.cuStreamWaitValue32(s1, b + 1, 1, 0)), code(cu.cuStreamWaitValue64(s1, b + 12, 1, 0))]
out["bad_flags"] = [code(cu.cuStreamWriteValue32(s1, b, 1, 4)), code(cu.cuStreamWaitValue32(s1, b, 1, 7))]
out["wild"] = [code(cu.cuStreamWriteValue32(s1, 0x1000, 1, 0)), code(cu.cuStreamWaitValue32(s1, 0x1000, 1, 0))]
out["flush"] = code(cu.cuStreamWaitValue32(s1, b, 1, F.CU_STREAM_WAIT_VALUE_FLUSH))
# conditions that hold already: the stream goes on
ok(cu.cuStreamWriteValue32(s1, b + 16, 5, 0))
true_now = [(b + 16, 0xFFFFFFF0, F.CU_STREAM_WAIT_VALUE_GEQ, 4), (b + 16, 5, F.CU_STREAM_WAIT_VALUE_EQ, 4),
            (b + 16, 4, F.CU_STREAM_WAIT_VALUE_AND, 4), (b + 16, 0xFFFFFFF0, F.CU_STREAM_WAIT_VALUE_NOR, 4),
            (b + 8, 0x0123456789ABCDEF, F.CU_STREAM_WAIT_VALUE_EQ, 8), (b + 8, 1, F.CU_STREAM_WAIT_VALUE_GEQ, 8)]
for addr, value, flag, width in true_now:
    wait = cu.cuStreamWaitValue32 if width == 4 else cu.cuStreamWaitValue64
    ok(wait(s1, addr, value, flag))
out["true_now"] = code(cu.cuStreamQuery(s1))
# conditions that do not hold yet, each released by a later write of another stream
false_now = [(6, F.CU_STREAM_WAIT_VALUE_GEQ, 6), (9, F.CU_STREAM_WAIT_VALUE_EQ, 9), (0x10, F.CU_STREAM_WAIT_VALUE_AND, 0x30),
             (0xFFFFFFFA, F.CU_STREAM_WAIT_VALUE_NOR, 0), (7, F.CU_STREAM_WAIT_VALUE_GEQ, 0x80000006)]
released = []
for value, flag, releasing in false_now:
    ok(cu.cuStreamWriteValue32(s2, b + 16, 5, 0))
    ok(cu.cuStreamWaitValue32(s1, b + 16, value, flag))
    before = code(cu.cuStreamQuery(s1))
    ok(cu.cuStreamWriteValue32(s2, b + 16, releasing, 0))
    released.append([before, code(cu.cuStreamQuery(s1))])
out["released"] = released
# work behind a wait runs after the write that releases it, in order: the copy sees new data
src, dst = b + 4096, b + 8192
ok(cu.cuMemsetD8(src, 0x11, 256))
ok(cu.cuStreamWaitValue64(s1, b + 24, 1 << 40, F.CU_STREAM_WAIT_VALUE_GEQ))
ok(cu.cuMemcpyDtoDAsync(dst, src, 256, s1))
ok(cu.cuStreamWriteValue32(s1, b + 32, 77, 0))
done = ok(cu.cuEventCreate(cu.CUevent_flags.CU_EVENT_DISABLE_TIMING))
ok(cu.cuEventRecord(done, s1))
ok(cu.cuStreamWaitEvent(s3, done, 0))  # s3 waits for an event recorded behind the hold
ok(cu.cuMemsetD8Async(b + 12288, 0x33, 16, s3))
pinned = ok(cu.cuMemAllocHost(256))
out["pinned_copy"] = code(cu.cuMemcpyDtoHAsync(pinned, dst, 256, s1))  # into page-locked memory: kept too
out["behind"] = {"stream": code(cu.cuStreamQuery(s1)), "event": code(cu.cuEventQuery(done)),
                 "s3": code(cu.cuStreamQuery(s3)), "dst": read(dst, 4).hex(), "s3_memset": read(b + 12288, 4).hex()}
t0 = __import__("time").monotonic()
out["sync_while_held"] = [code(cu.cuStreamSynchronize(s1)), code(cu.cuEventSynchronize(done)),
                          code(cu.cuCtxSynchronize()), code(cu.cuMemcpyDtoHAsync(bytearray(4), dst, 4, s1))]
out["answered_at_once"] = __import__("time").monotonic() - t0 < 5
ok(cu.cuMemsetD8Async(src, 0x22, 256, s2))
ok(cu.cuStreamWriteValue64(s2, b + 24, (1 << 40) + 1, 0))
ok(cu.cuStreamSynchronize(s1)); ok(cu.cuStreamSynchronize(s3))
out["after"] = {"dst": read(dst, 256) == b"\\x22" * 256, "flag": read(b + 32, 4).hex(), "event": code(cu.cuEventQuery(done)),
                "s3_memset": read(b + 12288, 16) == b"\\x33" * 16,
                "pinned": ctypes.string_at(int(pinned), 256) == b"\\x22" * 256}
# batches: in order, a wait in them holding the rest
def op(kind, addr, value, flags=0):
    p = cu.CUstreamBatchMemOpParams()
    p.operation = kind
    params = p.waitValue if kind in (1, 4) else p.writeValue
    params.operation, params.address, params.flags = kind, addr, flags
    if kind in (1, 2):
        params.value = value
    else:
        params.value64 = value
    return p
O = cu.CUstreamBatchMemOpType
batch = [op(O.CU_STREAM_MEM_OP_WRITE_VALUE_32, b + 40, 0xA1A2A3A4), op(O.CU_STREAM_MEM_OP_WAIT_VALUE_32, b + 40, 0xA1A2A3A4,
         F.CU_STREAM_WAIT_VALUE_EQ), op(O.CU_STREAM_MEM_OP_WRITE_VALUE_64, b + 48, 0x1122334455667788)]
barrier = cu.CUstreamBatchMemOpParams(); barrier.operation = O.CU_STREAM_MEM_OP_BARRIER
ok(cu.cuStreamBatchMemOp(s1, 4, batch + [barrier], 0))
ok(cu.cuStreamSynchronize(s1))
out["batch"] = read(b + 40, 16).hex()
out["batch_refusals"] = [code(cu.cuStreamBatchMemOp(s1, 0, None, 0)), code(cu.cuStreamBatchMemOp(s1, 1, batch[:1], 1)),
                         code(cu.cuStreamBatchMemOp(s1, 257, batch[:1] * 257, 0))]
held = [op(O.CU_STREAM_MEM_OP_WAIT_VALUE_64, b + 56, 3, F.CU_STREAM_WAIT_VALUE_EQ),
        op(O.CU_STREAM_MEM_OP_WRITE_VALUE_32, b + 64, 9)]
ok(cu.cuStreamBatchMemOp(s1, 2, held, 0))
out["batch_held"] = [code(cu.cuStreamQuery(s1)), read(b + 64, 4).hex()]
ok(cu.cuMemsetD32(b + 56, 3, 1))  # a synchronous memset releases it too
out["batch_released"] = [code(cu.cuStreamQuery(s1)), read(b + 64, 4).hex()]
# a copy from pageable memory kept behind a wait copies what the buffer held at the call
rng = random.Random(5)
big = bytes(rng.getrandbits(8) for _ in range(1 << 16)) * 16
pageable, big_dst = bytearray(big), ok(cu.cuMemAlloc(1 << 20))
ok(cu.cuStreamWaitValue32(s1, b + 88, 1, F.CU_STREAM_WAIT_VALUE_EQ))
ok(cu.cuMemcpyHtoDAsync(big_dst, pageable, 1 << 20, s1))
pageable[:] = bytes(1 << 20)  # reusable once the call returns, as with the real driver
ok(cu.cuStreamWriteValue32(s2, b + 88, 1, 0))
ok(cu.cuStreamSynchronize(s1))
out["pageable_kept"] = read(big_dst, 1 << 20) == big
# the default stream held: synchronous copies and memsets would wait, so they are refused
ok(cu.cuStreamWaitValue32(0, b + 80, 1, F.CU_STREAM_WAIT_VALUE_EQ))
out["default_held"] = [code(cu.cuMemcpyHtoD(b + 84, b"late", 4)), code(cu.cuMemsetD32(b + 84, 1, 1))]
ok(cu.cuStreamWriteValue32(s1, b + 80, 1, 0))
ok(cu.cuMemcpyHtoD(b + 84, b"free", 4))
out["default_released"] = read(b + 84, 4).decode()
# a wait nothing satisfies: synchronisation answers an error instead of hanging
ok(cu.cuStreamWaitValue32(s2, b + 72, 1, F.CU_STREAM_WAIT_VALUE_EQ))
out["never"] = [code(cu.cuStreamSynchronize(s2)), code(cu.cuStreamQuery(s2))]
# a flag in page-locked memory the host writes (not through a relay: vgpud maps the memory)
if os.environ.get("HOST_FLAG"):
    flag = ok(cu.cuMemHostAlloc(64, cu.CU_MEMHOSTALLOC_DEVICEMAP))
    ctypes.memset(int(flag), 0, 64)
    ok(cu.cuStreamWaitValue32(s1, int(flag), 1, F.CU_STREAM_WAIT_VALUE_EQ))
    ok(cu.cuMemsetD8Async(b + 100, 0x44, 4, s1))
    before = [code(cu.cuStreamQuery(s1)), read(b + 100, 4).hex()]
    ctypes.c_uint32.from_address(int(flag)).value = 1  # the host's own write
    out["host_flag"] = before + [code(cu.cuStreamSynchronize(s1)), read(b + 100, 4).hex()]
# captured into a graph: done when the graph is launched
ok(cu.cuStreamBeginCapture(s1, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL))
ok(cu.cuStreamWriteValue32(s1, b + 96, 0x600D, 0))
ok(cu.cuStreamWaitValue32(s1, b + 96, 0x600D, F.CU_STREAM_WAIT_VALUE_EQ))
graph = ok(cu.cuStreamEndCapture(s1))
nodes, count = ok(cu.cuGraphGetNodes(graph, 4))
out["captured"] = [count, [int(ok(cu.cuGraphNodeGetType(n))) for n in nodes[:count]], read(b + 96, 4).hex()]
ok(cu.cuGraphLaunch(ok(cu.cuGraphInstantiate(graph, 0)), s1)); ok(cu.cuStreamSynchronize(s1))
out["graph_ran"] = read(b + 96, 4).hex()
attrs = cu.CUdevice_attribute
out["attributes"] = [ok(cu.cuDeviceGetAttribute(getattr(attrs, name), 0)) for name in (
    "CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_MEM_OPS_V1", "CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS",
    "CU_DEVICE_ATTRIBUTE_CAN_USE_64_BIT_STREAM_MEM_OPS_V1", "CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR",
    "CU_DEVICE_ATTRIBUTE_CAN_USE_STREAM_WAIT_VALUE_NOR_V1", "CU_DEVICE_ATTRIBUTE_CAN_FLUSH_REMOTE_WRITES")]
# the unsuffixed names (cuBLASLt looks up cuStreamWaitValue32 with dlsym) are exported and work
lib = ctypes.CDLL("libcuda.so.1")
lib.cuStreamWaitValue32.argtypes = lib.cuStreamWriteValue32.argtypes = [
    ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_uint]
ok(cu.cuMemsetD32(b + 72, 0, 1))
out["dlsym"] = [lib.cuStreamWriteValue32(None, b + 72, 41, 0), lib.cuStreamWaitValue32(None, b + 72, 41, 1),
                read(b + 72, 4).hex()]
print(json.dumps(out))
"""


def test_stream_memory_operations(vgpud):
    served_by_simulator(vgpud)
    out = run_json(MEMOPS, {**vgpud.env, "HOST_FLAG": "" if vgpud.remote else "1"}, timeout=120)
    invalid, not_ready, timeout = C["CUDA_ERROR_INVALID_VALUE"], C["CUDA_ERROR_NOT_READY"], C["CUDA_ERROR_TIMEOUT"]
    assert out["written"] == "efbeadde00000000efcdab8967452301"
    assert out["misaligned"] == [invalid] * 4 and out["bad_flags"] == [invalid] * 2 and out["wild"] == [invalid] * 2
    assert out["flush"] == invalid, "no simulated GPU can flush remote writes (its attribute says 0)"
    assert out["true_now"] == 0
    assert out["released"] == [[not_ready, 0]] * 5, "GEQ (cyclic), EQ, AND and NOR each wait, then go"
    assert out["behind"] == {"stream": not_ready, "event": not_ready, "s3": not_ready, "dst": "00000000",
                             "s3_memset": "00000000"}, "nothing behind the wait ran"
    assert out["sync_while_held"] == [timeout] * 4 and out["answered_at_once"]
    # through a relay page-locked memory is not shared with the GPU host: such a copy is one its
    # caller waits for, which a held stream cannot keep
    assert out["pinned_copy"] == (timeout if vgpud.remote else 0)
    assert out["after"] == {"dst": True, "flag": "4d000000", "event": 0, "s3_memset": True,
                            "pinned": not vgpud.remote}, \
        "the kept copy ran after the releasing memset: it copied the new bytes"
    assert out["batch"] == "a4a3a2a1000000008877665544332211"
    assert out["batch_refusals"] == [invalid] * 3
    assert out["batch_held"] == [not_ready, "00000000"] and out["batch_released"] == [0, "09000000"]
    assert out["pageable_kept"]
    assert out["default_held"] == [timeout, timeout] and out["default_released"] == "free"
    assert out["never"] == [timeout, not_ready]
    if not vgpud.remote:
        assert out["host_flag"] == [not_ready, "00000000", 0, "44444444"], "the host's write released the wait"
    batch_node = C["CU_GRAPH_NODE_TYPE_BATCH_MEM_OP"]
    assert out["captured"] == [2, [batch_node, batch_node], "00000000"] and out["graph_ran"] == "0d600000"
    assert out["attributes"] == [1, 1, 1, 1, 1, 0]
    assert out["dlsym"] == [0, 0, "29000000"]


def test_a_held_stream_never_hangs_vgpud(vgpud):
    """A process that ends with a stream held leaves nothing behind, and vgpud goes on serving."""
    served_by_simulator(vgpud)
    start = time.monotonic()
    assert run_json(PRELUDE + """
buf = ok(cu.cuMemAlloc(4096)); s = ok(cu.cuStreamCreate(1))
ok(cu.cuStreamWaitValue32(s, buf, 1, 1)); ok(cu.cuMemsetD8Async(buf, 1, 16, s))
print(json.dumps(code(cu.cuStreamSynchronize(s))))
""", vgpud.env) == C["CUDA_ERROR_TIMEOUT"]
    assert run_json(PRELUDE + "print(json.dumps(int(ok(cu.cuMemAlloc(16))) > 0))", vgpud.env) is True
    assert time.monotonic() - start < 60


def test_ipc_handles_stay_within_a_tenant():
    """A handle opens only for processes of the exporter's tenant (network clients of another
    token get what a forged handle gets), and a process's opens go when it ends."""
    state = DaemonState(parse("h100"))
    service = CudaService(state)
    alice, bob, alice_too = (state.attach(pid, 0, "x", tenant=Tenant(name), peer="host") for pid, name in
                             ((1, "alice"), (2, "bob"), (3, "alice")))
    as_process = {s.pid: Caller(s, PRIMARY_CONTEXT) for s in (alice, bob, alice_too)}
    ptr, handle = ctypes.c_uint64(), service.api.ctype({"kind": "name", "name": "CUipcMemHandle"})()
    assert service.cuMemAlloc_v2(as_process[1], ptr, 4096) == 0
    assert service.cuIpcGetMemHandle(as_process[1], handle, ptr.value) == 0
    opened = ctypes.c_uint64()
    assert service.cuIpcOpenMemHandle_v2(as_process[2], opened, handle, 1) == C["CUDA_ERROR_INVALID_VALUE"]
    assert service.cuIpcOpenMemHandle_v2(as_process[3], opened, handle, 1) == 0 and opened.value == ptr.value
    memory = state.gpus[0].memory
    memory.write(alice.id, ptr.value, b"shared")
    assert bytes(memory.read(alice_too.id, ptr.value, 6)) == b"shared"
    with pytest.raises(InvalidAddress):
        memory.read(bob.id, ptr.value, 6)
    state.detach(alice)  # the exporter ends: the memory stays for the opener
    assert bytes(memory.read(alice_too.id, ptr.value, 6)) == b"shared"
    state.detach(alice_too)  # the opener ends too: the memory goes
    assert memory.allocation_at(ptr.value) is None
