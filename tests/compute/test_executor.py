"""vgpud's executor: kernels (tiny ELF objects built here from LLVM IR) run in a worker process
that maps exactly its owner's device memory at the device addresses."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import time

import llvmlite.binding as llvm
import psutil
import pytest

from vgpu.compute import compiler
from vgpu.compute.executor import Executor, ExecutorClosed
from vgpu.compute.jobs import Buffer, Job
from vgpu.device.memory import DeviceMemory, Mapping

A, B = 11, 22

#: test kernels, each ``i32 (ptr launch, i32 first_cta, i32 count)``
IR = r"""
; launch = {ptr counts}: counts[cta] += 1 (atomically) for each CTA run
define i32 @cta_counts(ptr %launch, i32 %first, i32 %count) {
entry:
  %counts = load ptr, ptr %launch
  %end = add i32 %first, %count
  br label %loop
loop:
  %i = phi i32 [%first, %entry], [%next, %loop]
  %wide = zext i32 %i to i64
  %p = getelementptr i32, ptr %counts, i64 %wide
  %old = atomicrmw add ptr %p, i32 1 seq_cst
  %next = add i32 %i, 1
  %done = icmp uge i32 %next, %end
  br i1 %done, label %exit, label %loop
exit:
  ret i32 0
}

; launch = {u64 address, u64 value, u32 write}: store value at address, or load it into value
define i32 @poke(ptr %launch, i32 %first, i32 %count) {
entry:
  %address = load i64, ptr %launch
  %pointer = inttoptr i64 %address to ptr
  %value_at = getelementptr i8, ptr %launch, i64 8
  %write_at = getelementptr i8, ptr %launch, i64 16
  %write = load i32, ptr %write_at
  %is_write = icmp ne i32 %write, 0
  br i1 %is_write, label %store, label %load
store:
  %value = load i64, ptr %value_at
  store volatile i64 %value, ptr %pointer
  ret i32 0
load:
  %found = load volatile i64, ptr %pointer
  store i64 %found, ptr %value_at
  ret i32 0
}

; launch = {u32 code}: every CTA fails with that code
define i32 @fail(ptr %launch, i32 %first, i32 %count) {
  %code = load i32, ptr %launch
  ret i32 %code
}

; never returns
define i32 @spin(ptr %launch, i32 %first, i32 %count) {
entry:
  br label %loop
loop:
  %x = load volatile i32, ptr %launch
  br label %loop
}

; launch = {ptr params, ptr out, u64 out_used}: out[0..16) = params[0..16), out_used = 16
define i32 @echo(ptr %launch, i32 %first, i32 %count) {
  %params = load ptr, ptr %launch
  %out_at = getelementptr i8, ptr %launch, i64 8
  %out = load ptr, ptr %out_at
  %used_at = getelementptr i8, ptr %launch, i64 16
  call void @llvm.memcpy.p0.p0.i64(ptr %out, ptr %params, i64 16, i1 false)
  store i64 16, ptr %used_at
  ret i32 0
}
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)
"""


@pytest.fixture(scope="module")
def kernels() -> bytes:
    module = llvm.parse_assembly(IR)
    machine = compiler.target_machine()
    module.triple = machine.triple
    module.verify()
    return machine.emit_object(module)


@pytest.fixture
def memory() -> DeviceMemory:
    return DeviceMemory(0)


@pytest.fixture
def executor(memory):
    executor = Executor([memory], A)
    yield executor
    executor.close()


def poke(kernels: bytes, address: int, value: int = 0, write: bool = False) -> Job:
    return Job("tests", kernels, "poke", struct.pack("<QQI4x", address, value, write), 1)


def peek_value(result) -> int:
    return struct.unpack_from("<Q", result.launch, 8)[0]


def test_every_cta_runs_exactly_once_on_many_threads(kernels, memory, executor):
    ctas = 20000
    counts = memory.allocate(A, 4 * ctas)
    others = memory.allocate(B, 4 * ctas)
    memory.write(B, others.address, b"\x07" * 4 * ctas)
    result = executor.run(Job("tests", kernels, "cta_counts", struct.pack("<Q", counts.address), ctas, threads=8))
    assert result.code == 0 and result.seconds > 0
    assert bytes(memory.read(A, counts.address, 4 * ctas)) == struct.pack("<i", 1) * ctas
    assert bytes(memory.read(B, others.address, 4 * ctas)) == b"\x07" * 4 * ctas


def test_kernels_and_copies_see_one_memory(kernels, memory, executor):
    allocation = memory.allocate(A, 1 << 20)
    memory.write(A, allocation.address + 4096, struct.pack("<Q", 1234))
    assert peek_value(executor.run(poke(kernels, allocation.address + 4096))) == 1234
    executor.run(poke(kernels, allocation.address + 8, 0xABCDEF, write=True))
    assert bytes(memory.read(A, allocation.address + 8, 8)) == struct.pack("<Q", 0xABCDEF)
    memory.write(A, allocation.address + 4096, struct.pack("<Q", 99))  # after the worker mapped it
    assert peek_value(executor.run(poke(kernels, allocation.address + 4096))) == 99
    memory.fill(A, allocation.address, b"\0", 1 << 20)  # punches a hole the worker sees too
    assert peek_value(executor.run(poke(kernels, allocation.address + 8))) == 0


def test_another_owners_memory_is_out_of_reach(kernels, memory, executor):
    mine = memory.allocate(A, 4096)
    theirs = memory.allocate(B, 4096)
    memory.write(B, theirs.address, b"\x05" * 4096)
    first = executor.worker_pid
    result = executor.run(poke(kernels, theirs.address + 64, 1, write=True))
    assert result.code == 700 and "SIGSEGV" in result.detail
    assert bytes(memory.read(B, theirs.address, 4096)) == b"\x05" * 4096
    # the next job gets a fresh worker with the owner's memory mapped again
    assert executor.run(poke(kernels, mine.address, 3, write=True)).code == 0
    assert executor.worker_pid not in (None, first)
    assert bytes(memory.read(A, mine.address, 8)) == struct.pack("<Q", 3)


def test_null_page_and_unmapped_device_addresses_fault(kernels, memory, executor):
    memory.allocate(A, 4096)
    assert executor.run(poke(kernels, 0x10)).code == 700
    assert executor.run(poke(kernels, memory.base + (1 << 30))).code == 700


def test_freed_memory_is_unmapped_in_the_worker(kernels, memory, executor):
    allocation = memory.allocate(A, 3 << 20)
    assert executor.run(poke(kernels, allocation.address + (2 << 20), 1, write=True)).code == 0
    memory.free(A, allocation.address)
    assert executor.run(poke(kernels, allocation.address + (2 << 20))).code == 700


def test_legacy_window_allocations_are_reachable(kernels, memory, executor):
    legacy = [memory.allocate(A, 1 << 20, legacy=True) for _ in range(4)]
    assert all(a.address < 1 << 32 for a in legacy)
    for index, allocation in enumerate(legacy):
        assert executor.run(poke(kernels, allocation.address + 16, index + 1, write=True)).code == 0
    for index, allocation in enumerate(legacy):
        assert bytes(memory.read(A, allocation.address + 16, 8)) == struct.pack("<Q", index + 1)
    # a legacy address nothing is allocated at faults as well (the window is reserved)
    assert executor.run(poke(kernels, legacy[-1].end + (64 << 20))).code == 700


def test_ipc_granted_memory_is_reachable_until_revoked(kernels, memory, executor):
    theirs = memory.allocate(B, 4096)
    memory.grant(theirs.address, A)
    assert executor.run(poke(kernels, theirs.address, 42, write=True)).code == 0
    assert bytes(memory.read(B, theirs.address, 8)) == struct.pack("<Q", 42)
    memory.free(B, theirs.address)  # still open in A: it stays
    assert peek_value(executor.run(poke(kernels, theirs.address))) == 42
    memory.revoke(theirs.address, A)
    assert executor.run(poke(kernels, theirs.address)).code == 700


def test_vmm_mappings_are_reachable_at_their_virtual_address(kernels, memory, executor):
    physical = memory.allocate(A, 4 << 20)
    virtual = memory.reserve(A, 8 << 20, 0)
    mapping = Mapping(virtual + (2 << 20), 2 << 20, A, physical.address + (2 << 20), handle=1)
    memory.map(mapping)
    # no access granted yet: the range faults, as on a GPU
    assert executor.run(poke(kernels, mapping.address)).code == 700
    mapping.access = 1  # read only
    memory.changed()
    memory.write(A, physical.address + (2 << 20) + 8, struct.pack("<Q", 77))
    assert peek_value(executor.run(poke(kernels, mapping.address + 8))) == 77
    assert executor.run(poke(kernels, mapping.address + 8, 1, write=True)).code == 700
    mapping.access = 3
    memory.changed()
    assert executor.run(poke(kernels, mapping.address + 16, 88, write=True)).code == 0
    assert bytes(memory.read(A, physical.address + (2 << 20) + 16, 8)) == struct.pack("<Q", 88)
    memory.unmap(A, mapping.address, mapping.size)
    assert executor.run(poke(kernels, mapping.address + 16)).code == 700


def test_error_codes_come_back(kernels, executor):
    result = executor.run(Job("tests", kernels, "fail", struct.pack("<I", 715), 100, threads=4))
    assert result.code == 715


def test_buffers_carry_parameters_and_return_output(kernels, executor):
    params = bytes(range(16))
    job = Job("tests", kernels, "echo", bytes(24), 1,
              buffers=(Buffer(0, 16, params), Buffer(8, 1 << 20, returned=True, used_at=16)))
    result = executor.run(job)
    assert result.code == 0 and result.outputs == [params]
    assert struct.unpack_from("<Q", result.launch, 16)[0] == 16


def test_a_kernel_past_the_time_limit_ends_with_702(kernels, memory, monkeypatch):
    monkeypatch.setenv("VGPU_KERNEL_TIMEOUT", "1")
    executor = Executor([memory], A)
    try:
        started = time.monotonic()
        future = executor.submit(Job("tests", kernels, "spin", bytes(8), 4, threads=2))
        assert future.result(timeout=30).code == 702
        assert time.monotonic() - started < 10
        assert executor.run(Job("tests", kernels, "fail", struct.pack("<I", 0), 1)).code == 0
    finally:
        executor.close()


def test_no_worker_outlives_close(kernels, memory):
    executor = Executor([memory], A)
    executor.sync_memory()
    pid = executor.worker_pid
    assert psutil.pid_exists(pid)
    future = executor.submit(Job("tests", kernels, "spin", bytes(8), 1))  # close ends even this
    time.sleep(0.5)
    executor.close()
    assert not psutil.pid_exists(pid)
    assert future.result(timeout=10).code != 0
    with pytest.raises(ExecutorClosed):
        executor.run(Job("tests", kernels, "fail", bytes(4), 1))


def test_no_worker_outlives_a_killed_vgpud(kernels, tmp_path):
    (tmp_path / "kernels.o").write_bytes(kernels)
    script = textwrap.dedent(f"""
        import struct, sys, time
        from vgpu.compute.executor import Executor
        from vgpu.compute.jobs import Job
        from vgpu.device.memory import DeviceMemory
        memory = DeviceMemory(0)
        counts = memory.allocate(1, 4)
        executor = Executor([memory], 1)
        code = open({str(tmp_path / 'kernels.o')!r}, 'rb').read()
        executor.submit(Job("k", code, "spin", bytes(8), 1))
        time.sleep(1)
        print(executor.worker_pid, flush=True)
        time.sleep(60)
    """)
    vgpud = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(vgpud.stdout.readline())
        assert psutil.Process(worker).status() != psutil.STATUS_ZOMBIE
        vgpud.send_signal(signal.SIGKILL)
        vgpud.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if psutil.Process(worker).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the worker outlived vgpud")
    finally:
        vgpud.kill()
        vgpud.wait()


def test_running_out_of_descriptors_fails_the_allocation(tmp_path):
    script = textwrap.dedent("""
        import resource
        from vgpu.device.memory import DeviceMemory, OutOfBacking
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        memory = DeviceMemory(0)
        made = []
        try:
            while True:
                made.append(memory.allocate(1, 4096))
        except OutOfBacking as error:
            print(len(made), error)
        memory.free(1, made[0].address)
        memory.allocate(1, 4096)
        print("again")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    count, _ = out.stdout.split(" ", 1)
    assert 20 < int(count) < 64 and "Too many open files" in out.stdout and out.stdout.endswith("again\n")


def test_backing_lists_what_an_owner_may_reach(memory):
    mine = memory.allocate(A, 100)
    theirs = memory.allocate(B, 100)
    assert [r.address for r in memory.backing(A)] == [mine.address]
    generation = memory.generation
    memory.grant(theirs.address, A)
    assert memory.generation > generation
    assert sorted(r.address for r in memory.backing(A)) == [mine.address, theirs.address]
    region = memory.backing(B)[0]
    fd = region.store.duplicate()
    try:
        assert os.fstat(fd).st_size == 4096
    finally:
        os.close(fd)
    memory.free(B, theirs.address)
    memory.revoke(theirs.address, A)
    assert region.store.duplicate() is None  # freed: the memfd is closed


def test_zero_fills_keep_untouched_memory_sparse(memory):
    huge = memory.allocate(A, 1 << 30)
    store = memory.backing(A)[0].store
    memory.write(A, huge.address + (512 << 20) + 5, b"xyz")
    memory.fill(A, huge.address + 1, b"\0", (1 << 30) - 1)
    assert bytes(memory.read(A, huge.address + (512 << 20), 16)) == bytes(16)
    assert os.fstat(store.fd).st_blocks * 512 <= 64 << 10  # the one written page, not 1 GiB
    memory.write(A, huge.address, b"\x01" * 8192)
    memory.fill(A, huge.address + 4, b"\0", 4096)
    assert bytes(memory.read(A, huge.address, 8192)) == b"\x01" * 4 + bytes(4096) + b"\x01" * 4092
