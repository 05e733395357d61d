"""CUDA graphs built by hand through cuda-python: every node kind vgpud serves does its work,
in dependency order, when the graph is launched (contents checked byte for byte),
per-node setters change graphs and executable graphs apart, structure queries answer as
cuda.h describes, and capture into an existing graph follows the dependencies it is given."""

from __future__ import annotations

import pytest

from tests.conftest import CUDA_PYTHON, run_json

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)


def served_by_simulator(vgpud) -> None:
    """The cuda backend serves part of the graph functions (docs/kernels.md); what a test that
    calls this checks is the simulator's."""
    if vgpud.through == "cuda-backend":
        pytest.skip("the cuda backend does not serve every graph function this test uses")

PRELUDE = CUDA_PYTHON + """
ok(cu.cuInit(0))
ctx = ok(cu.cuDevicePrimaryCtxRetain(ok(cu.cuDeviceGet(0))))
ok(cu.cuCtxSetCurrent(ctx))
stream = ok(cu.cuStreamCreate(0))
N = 4096
def alloc(n=N):
    return ok(cu.cuMemAlloc(n))
def upload(dptr, data):
    ok(cu.cuMemcpyHtoD(dptr, ctypes.create_string_buffer(bytes(data), len(data)), len(data)))
def download(dptr, n=N):
    out = ctypes.create_string_buffer(n)
    ok(cu.cuMemcpyDtoH(out, dptr, n))
    return out.raw
ZERO = bytes(N)
def copy_params(dst, src, n, dst_type=cu.CUmemorytype.CU_MEMORYTYPE_DEVICE, src_type=cu.CUmemorytype.CU_MEMORYTYPE_DEVICE):
    p = cu.CUDA_MEMCPY3D()
    p.srcMemoryType, p.dstMemoryType = src_type, dst_type
    if src_type == cu.CUmemorytype.CU_MEMORYTYPE_HOST:
        p.srcHost = src
    else:
        p.srcDevice = src
    if dst_type == cu.CUmemorytype.CU_MEMORYTYPE_HOST:
        p.dstHost = dst
    else:
        p.dstDevice = dst
    p.WidthInBytes, p.Height, p.Depth = n, 1, 1
    return p
def memset_params(dst, value, width, element=1, height=1, pitch=0):
    p = cu.CUDA_MEMSET_NODE_PARAMS()
    p.dst, p.value, p.elementSize, p.width, p.height, p.pitch = dst, value, element, width, height, pitch
    return p
def launch(graph_exec):
    ok(cu.cuGraphLaunch(graph_exec, stream))
    ok(cu.cuStreamSynchronize(stream))
"""


def test_nodes_do_their_work_in_dependency_order(vgpud):
    """memset -> copy -> memset over part of the copy, added in reverse creation order and
    joined by edges afterwards: a launch must follow the edges, not the creation order.
    Copies to and from page-locked and ordinary host memory, a 3D copy with pitches, and a
    child graph whose copy runs after its parent's memset."""
    served_by_simulator(vgpud)
    code = PRELUDE + """
a, b, c = alloc(), alloc(), alloc()
graph = ok(cu.cuGraphCreate(0))
# made last-first: the final memset, then the copy, then the first memset
late = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(b) + 100, 0x77, 10), ctx))
copy = ok(cu.cuGraphAddMemcpyNode(graph, None, 0, copy_params(int(b), int(a), N), ctx))
first = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(a), 0x5A, N), ctx))
ok(cu.cuGraphAddDependencies(graph, [first, copy], [copy, late], None, 2))
# a child graph copying b into c, after the late memset
child = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddMemcpyNode(child, None, 0, copy_params(int(c), int(b), N), ctx))
ok(cu.cuGraphAddChildGraphNode(graph, [late], 1, child))
upload(a, ZERO); upload(b, ZERO); upload(c, ZERO)
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
launch(graph_exec)
expected = bytearray([0x5A] * N); expected[100:110] = [0x77] * 10
report = {"b": download(b) == expected, "c": download(c) == expected, "a": download(a) == bytes([0x5A] * N)}


# a 3D copy: a 16x4x2 box out of a 64-byte pitched, 8-row volume into a packed one
volume = bytes(i % 256 for i in range(64 * 8 * 2))
upload(a, volume)
upload(c, ZERO)
p = copy_params(int(c), int(a), 16)
p.srcXInBytes, p.srcY, p.srcPitch, p.srcHeight = 8, 2, 64, 8
p.dstPitch, p.dstHeight, p.Height, p.Depth = 16, 4, 4, 2
box = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddMemcpyNode(box, None, 0, p, ctx))
launch(ok(cu.cuGraphInstantiate(box, 0)))
want = b"".join(volume[(z * 8 + y) * 64 + 8:(z * 8 + y) * 64 + 24] for z in range(2) for y in range(2, 6))
report["box"] = download(c)[:len(want)] == want
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report == {"a": True, "b": True, "c": True, "box": True}


def test_copies_to_and_from_host_memory(vgpud):
    """A memcpy node from page-locked host memory into device memory, then one from device
    memory into ordinary host memory, which vgpud reaches in the client process."""
    served_by_simulator(vgpud)
    vgpud.local_only("a vgpud on another host reaches neither the client's page-locked nor its ordinary memory")
    code = PRELUDE + """
a = alloc()
pinned = ok(cu.cuMemHostAlloc(N, 0))
pattern = bytes(i % 251 for i in range(N))
ctypes.memmove(int(pinned), pattern, N)
plain = ctypes.create_string_buffer(N)
host = ok(cu.cuGraphCreate(0))
into = ok(cu.cuGraphAddMemcpyNode(host, None, 0, copy_params(int(a), int(pinned), N,
                                  src_type=cu.CUmemorytype.CU_MEMORYTYPE_HOST), ctx))
ok(cu.cuGraphAddMemcpyNode(host, [into], 1, copy_params(ctypes.addressof(plain), int(a), N,
                           dst_type=cu.CUmemorytype.CU_MEMORYTYPE_HOST), ctx))
launch(ok(cu.cuGraphInstantiate(host, 0)))
report = {"host": plain.raw == pattern}
print(json.dumps(report))
"""
    assert run_json(code, vgpud.env) == {"host": True}


def test_setters_change_the_graph_and_the_executable_graph_apart(vgpud):
    """cuGraph*NodeSetParams change the graph (not an executable made before), cuGraphExec*
    change only the executable graph; get functions read back what was set; disabled nodes
    do nothing; cuGraphExecUpdate takes a same-shaped graph's parameters and refuses another
    shape; event record and wait nodes record and wait."""
    served_by_simulator(vgpud)
    code = PRELUDE + """
a, b = alloc(), alloc()
graph = ok(cu.cuGraphCreate(0))
fill = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(a), 1, N), ctx))
copy = ok(cu.cuGraphAddMemcpyNode(graph, [fill], 1, copy_params(int(b), int(a), N), ctx))
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
ok(cu.cuGraphMemsetNodeSetParams(fill, memset_params(int(a), 2, N)))
got = ok(cu.cuGraphMemsetNodeGetParams(fill))
report = {"got": [got.value, got.elementSize, got.width]}
launch(graph_exec)
report["exec_before_set"] = int(download(b)[0])  # 1: the executable graph kept its parameters
ok(cu.cuGraphExecMemsetNodeSetParams(graph_exec, fill, memset_params(int(a), 0x0303, N // 2, element=2), ctx))
launch(graph_exec)
report["exec_set"] = int(download(b)[0])
report["graph_unchanged"] = ok(cu.cuGraphMemsetNodeGetParams(fill)).value
ok(cu.cuGraphNodeSetEnabled(graph_exec, fill, 0))
report["enabled"] = ok(cu.cuGraphNodeGetEnabled(graph_exec, fill))
upload(a, bytes([9] * N))
launch(graph_exec)
report["disabled"] = int(download(b)[0])  # the copy ran, the memset did not
ok(cu.cuGraphNodeSetEnabled(graph_exec, fill, 1))
launch(graph_exec)
report["reenabled"] = int(download(b)[0])
# an update from a graph of the same shape: its parameters
same = ok(cu.cuGraphClone(graph))
ok(cu.cuGraphMemsetNodeSetParams(ok(cu.cuGraphNodeFindInClone(fill, same)), memset_params(int(a), 4, N)))
info = ok(cu.cuGraphExecUpdate(graph_exec, same))
launch(graph_exec)
report["updated"] = [int(info.result), int(download(b)[0])]
other = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddEmptyNode(other, None, 0))
report["refused"] = code(cu.cuGraphExecUpdate(graph_exec, other))
# copy parameters read back
params = ok(cu.cuGraphMemcpyNodeGetParams(copy))
report["copy"] = [int(params.dstDevice) == int(b), int(params.srcDevice) == int(a), params.WidthInBytes]
# wrong kinds
report["wrong_kind"] = code(cu.cuGraphMemcpyNodeGetParams(fill))
# events: a record node records; a wait node's event is read back and changed
start, end = ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(0))
events = ok(cu.cuGraphCreate(0))
record = ok(cu.cuGraphAddEventRecordNode(events, None, 0, start))
wait = ok(cu.cuGraphAddEventWaitNode(events, [record], 1, start))
report["record_event"] = int(ok(cu.cuGraphEventRecordNodeGetEvent(record))) == int(start)
ok(cu.cuGraphEventWaitNodeSetEvent(wait, end))
report["wait_event"] = int(ok(cu.cuGraphEventWaitNodeGetEvent(wait))) == int(end)
report["before_record"] = code(cu.cuEventQuery(end)), code(cu.cuEventElapsedTime(start, end))
events_exec = ok(cu.cuGraphInstantiate(events, 0))
ok(cu.cuGraphExecEventRecordNodeSetEvent(events_exec, record, end))
launch(events_exec)
report["recorded"] = code(cu.cuEventSynchronize(end)), code(cu.cuEventElapsedTime(start, end))
launch(ok(cu.cuGraphInstantiate(events, 0)))  # the graph's own node still records start
report["graph_records_start"] = code(cu.cuEventElapsedTime(start, end))
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["got"] == [2, 1, 4096]
    assert report["exec_before_set"] == 1 and report["exec_set"] == 3 and report["graph_unchanged"] == 2
    assert report["enabled"] == 0 and report["disabled"] == 9 and report["reenabled"] == 3
    assert report["updated"] == [0, 4]
    assert report["refused"] == 910  # CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE
    assert report["copy"] == [True, True, 4096]
    assert report["wrong_kind"] == 1
    assert report["record_event"] and report["wait_event"]
    # neither event recorded: elapsed time is refused (invalid handle); the executable graph
    # records end instead of start, and the graph still records start
    assert report["before_record"][1] == 400
    assert report["recorded"] == [0, 400] and report["graph_records_start"] == 0


def test_structure_queries(vgpud):
    """Edges, roots, dependencies and dependents (counts, arrays padded with NULL), removal
    of edges, node destruction, ids, clones, the containing graph and instantiation flags."""
    code = PRELUDE + """
graph = ok(cu.cuGraphCreate(0))
root = ok(cu.cuGraphAddEmptyNode(graph, None, 0))
left = ok(cu.cuGraphAddEmptyNode(graph, [root], 1))
right = ok(cu.cuGraphAddEmptyNode(graph, [root], 1))
join = ok(cu.cuGraphAddEmptyNode(graph, [left, right], 2))
ids = lambda nodes: [int(n) if n is not None and int(n) else 0 for n in nodes]
name = {int(root): "root", int(left): "left", int(right): "right", int(join): "join", 0: None}
names = lambda nodes: [name[i] for i in ids(nodes)]
report = {}
err, frm, to, data, count = cu.cuGraphGetEdges(graph, 0)
report["edge_count"] = [int(err), count]
err, frm, to, data, count = cu.cuGraphGetEdges(graph, 6)
report["edges"] = sorted(zip(names(frm[:count]), names(to[:count]))), count, names(frm[count:])
report["roots"] = names(ok(cu.cuGraphGetRootNodes(graph, 4))[0])
report["deps"] = names(ok(cu.cuGraphNodeGetDependencies(join, 2))[0])
report["dependents"] = names(ok(cu.cuGraphNodeGetDependentNodes(root, 2))[0])
report["dependent_count"] = ok(cu.cuGraphNodeGetDependentNodes(root, 0))[2]
ok(cu.cuGraphRemoveDependencies(graph, [right], [join], None, 1))
report["after_remove"] = names(ok(cu.cuGraphNodeGetDependencies(join, 1))[0])
report["remove_missing"] = code(cu.cuGraphRemoveDependencies(graph, [right], [join], None, 1))
ok(cu.cuGraphDestroyNode(left))
report["after_destroy"] = [ok(cu.cuGraphGetNodes(graph))[1], ok(cu.cuGraphNodeGetDependencies(join, 0))[2]]
report["containing"] = int(ok(cu.cuGraphNodeGetContainingGraph(join))) == int(graph)
report["local_ids"] = [ok(cu.cuGraphNodeGetLocalId(n)) for n in (root, right, join)]
graph_id = ok(cu.cuGraphGetId(graph))
report["tools_id"] = ok(cu.cuGraphNodeGetToolsId(join)) == (graph_id << 32 | 3)
clone = ok(cu.cuGraphClone(graph))
report["clone"] = [ok(cu.cuGraphGetNodes(clone))[1], ok(cu.cuGraphGetId(clone)) != graph_id]
cloned_join = ok(cu.cuGraphNodeFindInClone(join, clone))
report["cloned_join"] = [int(cloned_join) != int(join), ok(cu.cuGraphNodeGetDependencies(cloned_join, 0))[2],
                         int(ok(cu.cuGraphNodeGetContainingGraph(cloned_join))) == int(clone)]
report["not_in_clone"] = code(cu.cuGraphNodeFindInClone(join, graph))
flags = cu.CUgraphInstantiate_flags.CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH
graph_exec = ok(cu.cuGraphInstantiate(graph, flags))
report["flags"] = int(ok(cu.cuGraphExecGetFlags(graph_exec)))
report["exec_id"] = ok(cu.cuGraphExecGetId(graph_exec)) not in (graph_id, ok(cu.cuGraphGetId(clone)))
report["bad_flags"] = code(cu.cuGraphInstantiate(graph, 1 << 20))
# a cycle cannot be instantiated
ok(cu.cuGraphAddDependencies(graph, [right, join], [join, root], None, 2))
report["cycle"] = code(cu.cuGraphInstantiate(graph, 0))
params = cu.CUDA_GRAPH_INSTANTIATE_PARAMS()
report["cycle_result"] = [code(cu.cuGraphInstantiateWithParams(graph, params)), int(params.result_out)]
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["edge_count"] == [0, 4]
    edges, count, padding = report["edges"]
    assert sorted(map(tuple, edges)) == [("left", "join"), ("right", "join"), ("root", "left"), ("root", "right")]
    assert count == 4 and padding == [None, None]
    assert report["roots"] == ["root", None, None, None]
    assert report["deps"] == ["left", "right"] and report["dependents"] == ["left", "right"]
    assert report["dependent_count"] == 2
    assert report["after_remove"] == ["left"] and report["remove_missing"] == 1
    assert report["after_destroy"] == [3, 0]
    assert report["containing"] and report["local_ids"] == [0, 2, 3] and report["tools_id"]
    assert report["clone"] == [3, True] and report["cloned_join"] == [True, 0, True]
    assert report["not_in_clone"] == 1
    assert report["flags"] == 1 and report["exec_id"] and report["bad_flags"] == 1
    assert report["cycle"] == 1 and report["cycle_result"] == [1, 2]  # CUDA_GRAPH_INSTANTIATE_INVALID_STRUCTURE


def test_capture_into_a_graph_and_capture_dependencies(vgpud):
    """cuStreamBeginCaptureToGraph appends captured work after the nodes it is given;
    cuStreamUpdateCaptureDependencies sets what the next captured work follows."""
    served_by_simulator(vgpud)
    code = PRELUDE + """
a, b = alloc(), alloc()
graph = ok(cu.cuGraphCreate(0))
fill = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(a), 0x11, N), ctx))
marker = ok(cu.cuGraphAddEmptyNode(graph, None, 0))
ok(cu.cuStreamBeginCaptureToGraph(stream, graph, [fill], None, 1, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL))
ok(cu.cuMemcpyDtoDAsync(b, a, N, stream))
ok(cu.cuStreamUpdateCaptureDependencies(stream, [marker], None, 1, cu.CUstreamUpdateCaptureDependencies_flags.CU_STREAM_ADD_CAPTURE_DEPENDENCIES))
ok(cu.cuMemsetD8Async(int(b) + 8, 0x22, 8, stream))
same = ok(cu.cuStreamEndCapture(stream))
report = {"same_graph": int(same) == int(graph), "nodes": ok(cu.cuGraphGetNodes(graph))[1]}
nodes = ok(cu.cuGraphGetNodes(graph, 4))[0]
report["last_deps"] = ok(cu.cuGraphNodeGetDependencies(nodes[3], 0))[2]
report["copy_deps"] = [int(n) for n in ok(cu.cuGraphNodeGetDependencies(nodes[2], 1))[0]] == [int(fill)]
report["not_capturing"] = code(cu.cuStreamUpdateCaptureDependencies(stream, [marker], None, 1, 0))
upload(a, ZERO); upload(b, ZERO)
launch(ok(cu.cuGraphInstantiate(graph, 0)))
expected = bytearray([0x11] * N); expected[8:16] = [0x22] * 8
report["contents"] = download(b) == expected
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report == {"same_graph": True, "nodes": 4, "last_deps": 2, "copy_deps": True, "not_capturing": 401,
                      "contents": True}


SAXPY = PRELUDE + """
import struct
from cuda.bindings import nvrtc
source = b'extern "C" __global__ void saxpy(float a, const float *x, float *y, int n) { }'
program = ok(nvrtc.nvrtcCreateProgram(source, b"saxpy.cu", 0, [], []))
major = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, 0))
minor = ok(cu.cuDeviceGetAttribute(cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, 0))
options = [f"--gpu-architecture=sm_{major}{minor}".encode()]
assert int(nvrtc.nvrtcCompileProgram(program, 1, options)[0]) == 0
cubin = b" " * ok(nvrtc.nvrtcGetCUBINSize(program))
ok(nvrtc.nvrtcGetCUBIN(program, cubin))
saxpy = ok(cu.cuModuleGetFunction(ok(cu.cuModuleLoadData(cubin)), b"saxpy"))
kept = []
def kernel_params(a, x, y, n, grid=4, block=256, shared=0):
    values = (ctypes.c_float(a), ctypes.c_uint64(x), ctypes.c_uint64(y), ctypes.c_int(n))
    pointers = (ctypes.c_void_p * 4)(*[ctypes.addressof(v) for v in values])
    kept.append((values, pointers))
    p = cu.CUDA_KERNEL_NODE_PARAMS()
    p.func, p.gridDimX, p.gridDimY, p.gridDimZ = saxpy, grid, 1, 1
    p.blockDimX, p.blockDimY, p.blockDimZ, p.sharedMemBytes = block, 1, 1, shared
    p.kernelParams = ctypes.addressof(pointers)
    return p
def read_args(p):
    pointers = (ctypes.c_void_p * 4).from_address(int(p.kernelParams))
    return [ctypes.c_float.from_address(pointers[0]).value, ctypes.c_uint64.from_address(pointers[1]).value,
            ctypes.c_uint64.from_address(pointers[2]).value, ctypes.c_int.from_address(pointers[3]).value]
"""


def _saxpy_launches(vgpud, pid: int) -> list[tuple]:
    import struct
    return [(x["grid"][0], x["block"][0], *struct.unpack("<f4xQQi", bytes.fromhex(x["args_hex"])))
            for x in vgpud.control("launches", pid=pid)["launches"] if x["kernel"] == "saxpy" and x["graph"]]


def test_kernel_nodes_parameters_and_attributes(vgpud):
    """A kernel node's parameters read back (kernelParams point at the values given), set on
    the graph and on an executable graph apart, seen in the recorded graph launches; the
    generic node functions (cuGraphAddNode, cuGraphNodeGetParams, cuGraphNodeSetParams,
    cuGraphExecNodeSetParams); kernel node attributes kept, copied and cloned."""
    served_by_simulator(vgpud)
    code = SAXPY + """
graph = ok(cu.cuGraphCreate(0))
node = ok(cu.cuGraphAddKernelNode(graph, None, 0, kernel_params(1.5, 0x1000, 0x2000, 11)))
got = ok(cu.cuGraphKernelNodeGetParams(node))
report = {"got": [got.gridDimX, got.blockDimX, got.sharedMemBytes, int(got.func) == int(saxpy)] + read_args(got)}
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
ok(cu.cuGraphKernelNodeSetParams(node, kernel_params(2.5, 0x3000, 0x4000, 22, grid=8)))
launch(graph_exec)  # still 1.5: instantiated before the change
ok(cu.cuGraphExecKernelNodeSetParams(graph_exec, node, kernel_params(3.5, 0x5000, 0x6000, 33, grid=2, block=128)))
launch(graph_exec)
launch(ok(cu.cuGraphInstantiate(graph, 0)))  # 2.5: the graph's own parameters
report["after_set"] = read_args(ok(cu.cuGraphKernelNodeGetParams(node)))
# the generic functions
params = cu.CUgraphNodeParams()
params.type = cu.CUgraphNodeType.CU_GRAPH_NODE_TYPE_KERNEL
p = kernel_params(4.5, 0x7000, 0x8000, 44, grid=16)
params.kernel.func, params.kernel.gridDimX, params.kernel.gridDimY, params.kernel.gridDimZ = saxpy, 16, 1, 1
params.kernel.blockDimX, params.kernel.blockDimY, params.kernel.blockDimZ = 64, 1, 1
params.kernel.kernelParams = p.kernelParams
generic = ok(cu.cuGraphAddNode(graph, [node], None, 1, params))
read = ok(cu.cuGraphNodeGetParams(generic))
report["generic"] = [int(read.type), read.kernel.gridDimX, read.kernel.blockDimX] + read_args(read.kernel)
report["generic_deps"] = ok(cu.cuGraphNodeGetDependencies(generic, 0))[2]
memset = cu.CUgraphNodeParams()
memset.type = cu.CUgraphNodeType.CU_GRAPH_NODE_TYPE_MEMSET
report["wrong_kind"] = code(cu.cuGraphNodeSetParams(generic, memset))
params.kernel.gridDimX = 32
ok(cu.cuGraphNodeSetParams(generic, params))
report["generic_set"] = ok(cu.cuGraphNodeGetParams(generic)).kernel.gridDimX
second = ok(cu.cuGraphInstantiate(graph, 0))
params.kernel.gridDimX = 64
ok(cu.cuGraphExecNodeSetParams(second, generic, params))
launch(second)
# attributes
value = cu.CUkernelNodeAttrValue()
value.priority = -3
ok(cu.cuGraphKernelNodeSetAttribute(node, cu.CUkernelNodeAttrID.CU_LAUNCH_ATTRIBUTE_PRIORITY, value))
report["priority"] = ok(cu.cuGraphKernelNodeGetAttribute(node, cu.CUkernelNodeAttrID.CU_LAUNCH_ATTRIBUTE_PRIORITY)).priority
ok(cu.cuGraphKernelNodeCopyAttributes(generic, node))
report["copied"] = ok(cu.cuGraphKernelNodeGetAttribute(generic, cu.CUkernelNodeAttrID.CU_LAUNCH_ATTRIBUTE_PRIORITY)).priority
clone = ok(cu.cuGraphClone(graph))
report["cloned"] = ok(cu.cuGraphKernelNodeGetAttribute(ok(cu.cuGraphNodeFindInClone(node, clone)),
                                                       cu.CUkernelNodeAttrID.CU_LAUNCH_ATTRIBUTE_PRIORITY)).priority
report["bad_attribute"] = code(cu.cuGraphKernelNodeGetAttribute(node, cu.CUkernelNodeAttrID.CU_LAUNCH_ATTRIBUTE_IGNORE))
report["pid"] = os.getpid()
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env, timeout=120)
    assert report["got"] == [4, 256, 0, True, 1.5, 0x1000, 0x2000, 11]
    assert report["after_set"] == [2.5, 0x3000, 0x4000, 22]
    assert report["generic"] == [0, 16, 64, 4.5, 0x7000, 0x8000, 44] and report["generic_deps"] == 1
    assert report["wrong_kind"] == 1 and report["generic_set"] == 32
    assert report["priority"] == -3 and report["copied"] == -3 and report["cloned"] == -3
    assert report["bad_attribute"] == 1
    assert _saxpy_launches(vgpud, report["pid"]) == [
        (4, 256, 1.5, 0x1000, 0x2000, 11), (2, 128, 3.5, 0x5000, 0x6000, 33), (8, 256, 2.5, 0x3000, 0x4000, 22),
        (8, 256, 2.5, 0x3000, 0x4000, 22), (64, 64, 4.5, 0x7000, 0x8000, 44)]


def test_graph_memory_nodes(vgpud):
    """An allocation node gives an address when made; the memory is in use from its launch
    until a free node (or cuMemFree) frees it; a graph that still holds its allocation cannot
    be launched again unless instantiated to free on launch; graph memory attributes count it,
    the high-water marks reset to 0 only; a trim gives back memory of destroyed graphs."""
    served_by_simulator(vgpud)
    code = PRELUDE + """
def attribute(name):
    return int(ok(cu.cuDeviceGetGraphMemAttribute(0, getattr(cu.CUgraphMem_attribute, name))))
graph = ok(cu.cuGraphCreate(0))
p = cu.CUDA_MEM_ALLOC_NODE_PARAMS()
p.poolProps.allocType = cu.CUmemAllocationType.CU_MEM_ALLOCATION_TYPE_PINNED
p.poolProps.location.type = cu.CUmemLocationType.CU_MEM_LOCATION_TYPE_DEVICE
p.poolProps.location.id = 0
p.bytesize = N
alloc = ok(cu.cuGraphAddMemAllocNode(graph, None, 0, p))
dptr = int(p.dptr)
fill = ok(cu.cuGraphAddMemsetNode(graph, [alloc], 1, memset_params(dptr, 0x3C, N), ctx))
read = ok(cu.cuGraphMemAllocNodeGetParams(alloc))
report = {"dptr": dptr != 0, "read": [int(read.dptr) == dptr, read.bytesize],
          "before": [attribute("CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT"), attribute("CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT") >= N]}
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
launch(graph_exec)
report["contents"] = download(dptr) == bytes([0x3C] * N)
report["used"] = attribute("CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT")
report["relaunch"] = code(cu.cuGraphLaunch(graph_exec, stream))
ok(cu.cuMemFreeAsync(dptr, stream))
report["after_free"] = attribute("CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT"), attribute("CU_GRAPH_MEM_ATTR_USED_MEM_HIGH")
report["double_free"] = code(cu.cuMemFree(dptr))
launch(graph_exec)
# a second graph frees it: its free node reads back the address
frees = ok(cu.cuGraphCreate(0))
free = ok(cu.cuGraphAddMemFreeNode(frees, None, 0, dptr))
report["free_read"] = int(ok(cu.cuGraphMemFreeNodeGetParams(free))) == dptr
launch(ok(cu.cuGraphInstantiate(frees, 0)))
report["freed_by_graph"] = attribute("CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT")
report["not_graph_memory"] = code(cu.cuGraphAddMemFreeNode(frees, None, 0, int(alloc_plain := ok(cu.cuMemAlloc(64)))))
# auto free on launch: relaunching frees the earlier launch's allocation
auto = ok(cu.cuGraphInstantiate(graph, cu.CUgraphInstantiate_flags.CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH))
launch(auto)
report["auto_relaunch"] = code(cu.cuGraphLaunch(auto, stream))
# what graphs with memory nodes cannot do
report["clone"] = code(cu.cuGraphClone(graph))
report["destroy_node"] = code(cu.cuGraphDestroyNode(fill))
# high-water marks: reset to 0 only
zero = cu.cuuint64_t(0)
report["reset"] = code(cu.cuDeviceSetGraphMemAttribute(0, cu.CUgraphMem_attribute.CU_GRAPH_MEM_ATTR_USED_MEM_HIGH, zero))
report["set_current"] = code(cu.cuDeviceSetGraphMemAttribute(0, cu.CUgraphMem_attribute.CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT, zero))
# trim: once its graphs are gone and the memory is free, the reservation goes
ok(cu.cuMemFreeAsync(dptr, stream))
free_before = ok(cu.cuMemGetInfo())[0]
for e in (graph_exec, auto):
    ok(cu.cuGraphExecDestroy(e))
ok(cu.cuGraphDestroy(graph)); ok(cu.cuGraphDestroy(frees))
ok(cu.cuDeviceGraphMemTrim(0))
report["trimmed"] = [attribute("CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT"), ok(cu.cuMemGetInfo())[0] > free_before]
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["dptr"] and report["read"] == [True, 4096]
    assert report["before"] == [0, True]
    assert report["contents"] and report["used"] == 4096
    assert report["relaunch"] == 1  # its allocation is still in use
    assert report["after_free"] == [0, 4096] and report["double_free"] == 1
    assert report["free_read"] and report["freed_by_graph"] == 0 and report["not_graph_memory"] == 1
    assert report["auto_relaunch"] == 0
    assert report["clone"] == 801 and report["destroy_node"] == 801  # CUDA_ERROR_NOT_SUPPORTED
    assert report["reset"] == 0 and report["set_current"] == 1
    assert report["trimmed"] == [0, True]


def test_legacy_names_through_ctypes(vgpud):
    """The CUDA 11 and 12.0 names cudart and older programs resolve (cuda-python binds the
    newer ones): cuGraphAddDependencies, cuGraphGetEdges, cuGraphNodeGetDependencies,
    cuGraphInstantiate with its log, cuGraphExecUpdate with its error node and result,
    cuStreamUpdateCaptureDependencies."""
    served_by_simulator(vgpud)  # the capture part: the cuda backend hands out no capture graph
    code = PRELUDE + """
lib = ctypes.CDLL("libcuda.so.1")
P = ctypes.c_void_p
graph = ok(cu.cuGraphCreate(0))
a = ok(cu.cuGraphAddEmptyNode(graph, None, 0))
b = ok(cu.cuGraphAddEmptyNode(graph, None, 0))
h = lambda x: P(int(x))
report = {"add": lib.cuGraphAddDependencies(h(graph), ctypes.byref(h(a)), ctypes.byref(h(b)), ctypes.c_size_t(1))}
frm, to, count = (P * 2)(), (P * 2)(), ctypes.c_size_t(2)
report["edges"] = [lib.cuGraphGetEdges(h(graph), frm, to, ctypes.byref(count)), count.value,
                   frm[0] == int(a), to[0] == int(b), frm[1]]
deps, count = (P * 1)(), ctypes.c_size_t(1)
report["deps"] = [lib.cuGraphNodeGetDependencies(h(b), deps, ctypes.byref(count)), count.value, deps[0] == int(a)]
graph_exec, error_node, log = P(), P(), ctypes.create_string_buffer(64)
report["instantiate"] = lib.cuGraphInstantiate(ctypes.byref(graph_exec), h(graph), ctypes.byref(error_node), log, ctypes.c_size_t(64))
other = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddMemsetNode(other, None, 0, memset_params(int(alloc()), 1, 16), ctx))
ok(cu.cuGraphAddEmptyNode(other, None, 0))
result = ctypes.c_int(-1)
report["update"] = [lib.cuGraphExecUpdate(graph_exec, h(other), ctypes.byref(error_node), ctypes.byref(result)),
                    result.value, error_node.value is not None]
ok(cu.cuStreamBeginCapture(stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED))
ok(cu.cuMemsetD8Async(int(alloc()), 1, 16, stream))
capture_graph = ok(cu.cuStreamGetCaptureInfo(stream))[2]
first = ok(cu.cuGraphGetNodes(capture_graph, 1))[0][0]
report["update_capture"] = lib.cuStreamUpdateCaptureDependencies(h(stream), ctypes.byref(h(first)), ctypes.c_size_t(1), 1)
ok(cu.cuMemsetD8Async(int(alloc()), 2, 16, stream))
ok(cu.cuMemsetD8Async(int(alloc()), 3, 16, stream))
ended = ok(cu.cuStreamEndCapture(stream))
nodes = ok(cu.cuGraphGetNodes(ended, 3))[0]
report["capture_deps"] = [ok(cu.cuGraphNodeGetDependencies(n, 0))[2] for n in nodes]
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["add"] == 0 and report["edges"] == [0, 1, True, True, None]
    assert report["deps"] == [0, 1, True] and report["instantiate"] == 0
    assert report["update"] == [910, 2, True]  # CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED, and where
    assert report["update_capture"] == 0 and report["capture_deps"] == [0, 1, 1]


def test_host_nodes_run_in_their_place(vgpud):
    """A host node runs on the library's host-function worker after the nodes before it and
    before the nodes after it: a copy into page-locked memory, a host function that reads it
    and writes another page-locked buffer, a copy of that buffer back to the device. A second
    host node in a child graph, parameters read back and changed on an executable graph, and
    later work on the stream that waits for the host functions."""
    served_by_simulator(vgpud)
    vgpud.local_only("a vgpud on another host cannot reach the client's page-locked memory")
    code = PRELUDE + """
lib = ctypes.CDLL("libcuda.so.1")
a, b = alloc(), alloc()
seen, written = ok(cu.cuMemHostAlloc(N, 0)), ok(cu.cuMemHostAlloc(N, 0))
calls = []
@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def double(data):  # written = 2 * seen, byte by byte
    calls.append(("double", data))
    src = ctypes.string_at(int(seen), N)
    ctypes.memmove(int(written), bytes((2 * x) & 0xFF for x in src), N)
@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def note(data):
    calls.append(("note", data))
def host_params(fn, data):
    p = cu.CUDA_HOST_NODE_PARAMS()
    p.fn = ctypes.cast(fn, ctypes.c_void_p).value
    p.userData = data
    return p
graph = ok(cu.cuGraphCreate(0))
fill = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(a), 21, N), ctx))
out = ok(cu.cuGraphAddMemcpyNode(graph, [fill], 1, copy_params(int(seen), int(a), N,
                                 dst_type=cu.CUmemorytype.CU_MEMORYTYPE_HOST), ctx))
host = ok(cu.cuGraphAddHostNode(graph, [out], 1, host_params(double, 7)))
back = ok(cu.cuGraphAddMemcpyNode(graph, [host], 1, copy_params(int(b), int(written), N,
                                  src_type=cu.CUmemorytype.CU_MEMORYTYPE_HOST), ctx))
child = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddHostNode(child, None, 0, host_params(note, 8)))
ok(cu.cuGraphAddChildGraphNode(graph, [back], 1, child))
read = ok(cu.cuGraphHostNodeGetParams(host))
report = {"read": [int(read.fn) == ctypes.cast(double, ctypes.c_void_p).value, int(read.userData)]}
upload(b, ZERO)
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
h = lambda x: ctypes.c_void_p(int(x))
report["launch"] = lib.cuGraphLaunch(h(graph_exec), h(stream))
dst = ctypes.create_string_buffer(N)
report["after"] = lib.cuMemcpyDtoHAsync_v2(dst, ctypes.c_uint64(int(b)), ctypes.c_size_t(N), h(stream))
report["sync"] = lib.cuStreamSynchronize(h(stream))
report["contents"] = dst.raw == bytes([42] * N)
report["calls"] = list(calls)
ok(cu.cuGraphExecHostNodeSetParams(graph_exec, host, host_params(note, 9)))
calls.clear()
lib.cuGraphLaunch(h(graph_exec), h(stream)); lib.cuStreamSynchronize(h(stream))
report["exec_set"] = list(calls)
report["null_fn"] = code(cu.cuGraphHostNodeSetParams(host, host_params(note, 1).__class__()))
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["read"] == [True, 7]
    assert report["launch"] == 0 and report["after"] == 0 and report["sync"] == 0
    assert report["contents"] and report["calls"] == [["double", 7], ["note", 8]]
    assert report["exec_set"] == [["note", 9], ["note", 8]]
    assert report["null_fn"] == 1


def test_debug_dot_print(vgpud, tmp_path):
    """cuGraphDebugDotPrint writes the graph where the caller runs: each node by kind and the
    id cuGraphNodeGetLocalId gives, kernel names, copy directions, edges, a child graph as a
    cluster; parameters with the verbose flag; an unwritable path refused as cuda.h says."""
    served_by_simulator(vgpud)
    code = SAXPY + f"""
a, b = alloc(), alloc()
graph = ok(cu.cuGraphCreate(0))
fill = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(a), 0xAB, N), ctx))
kernel = ok(cu.cuGraphAddKernelNode(graph, [fill], 1, kernel_params(1.0, int(a), int(b), N)))
copy = ok(cu.cuGraphAddMemcpyNode(graph, [kernel], 1, copy_params(int(b), int(a), N), ctx))
child = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddEmptyNode(child, None, 0))
ok(cu.cuGraphAddChildGraphNode(graph, [copy], 1, child))
ok(cu.cuGraphDebugDotPrint(graph, b"{tmp_path}/plain.dot", 0))
ok(cu.cuGraphDebugDotPrint(graph, b"{tmp_path}/verbose.dot", 1))
print(json.dumps({{"graph": ok(cu.cuGraphGetId(graph)), "ids": [ok(cu.cuGraphNodeGetLocalId(n)) for n in (fill, kernel, copy)],
                  "unwritable": code(cu.cuGraphDebugDotPrint(graph, b"{tmp_path}/no/such/dir.dot", 0)),
                  "bad_flags": code(cu.cuGraphDebugDotPrint(graph, b"{tmp_path}/x.dot", 1 << 30))}}))
"""
    report = run_json(code, vgpud.env, timeout=120)
    plain, verbose = (tmp_path / "plain.dot").read_text(), (tmp_path / "verbose.dot").read_text()
    g = report["graph"]
    assert plain.startswith("digraph") and f"subgraph cluster_{g}" in plain
    assert f'graph_{g}_node_{report["ids"][1]} [shape=box, label="KERNEL\\nid 1\\nsaxpy"]' in plain
    assert "MEMCPY\\nid 2\\nDtoD" in plain and "MEMSET\\nid 0" in plain and "value 0xab" not in plain
    assert f"graph_{g}_node_0 -> graph_{g}_node_1;" in plain and f"graph_{g}_node_2 -> graph_{g}_node_3;" in plain
    assert plain.count("subgraph cluster_") == 2  # the child graph's cluster
    assert "value 0xab" in verbose and "grid (4,1,1) block (256,1,1)" in verbose
    assert report["unwritable"] == 304 and report["bad_flags"] == 1  # CUDA_ERROR_OPERATING_SYSTEM


def test_user_objects(vgpud):
    """A user object's destructor runs (on the host-function worker) when the last reference
    goes: the caller's, a graph's, a clone's and an executable graph's (both take the graph's
    references again); references moved into a graph; refusals as cuda.h documents them."""
    served_by_simulator(vgpud)
    code = PRELUDE + """
lib = ctypes.CDLL("libcuda.so.1")
destroyed = []
@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def destroy(data):
    destroyed.append(data)
fn = ctypes.cast(destroy, ctypes.c_void_p).value
def settled():
    assert lib.cuCtxSynchronize() == 0
    return list(destroyed)
NO_SYNC = cu.CUuserObject_flags.CU_USER_OBJECT_NO_DESTRUCTOR_SYNC
obj = ok(cu.cuUserObjectCreate(1, fn, 1, NO_SYNC))
graph = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphAddEmptyNode(graph, None, 0))
ok(cu.cuGraphRetainUserObject(graph, obj, 2, 0))
ok(cu.cuUserObjectRelease(obj, 1))
clone = ok(cu.cuGraphClone(graph))
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
ok(cu.cuGraphDestroy(graph))
ok(cu.cuGraphDestroy(clone))
report = {"held_by_exec": settled()}
ok(cu.cuGraphExecDestroy(graph_exec))
report["last_gone"] = settled()
moved = ok(cu.cuUserObjectCreate(2, fn, 1, NO_SYNC))
second = ok(cu.cuGraphCreate(0))
ok(cu.cuGraphRetainUserObject(second, moved, 1, cu.CUuserObjectRetain_flags.CU_GRAPH_USER_OBJECT_MOVE))
report["too_many"] = code(cu.cuGraphReleaseUserObject(second, moved, 2))
ok(cu.cuGraphReleaseUserObject(second, moved, 1))
report["moved_released"] = settled()
kept = ok(cu.cuUserObjectCreate(3, fn, 1, NO_SYNC))
ok(cu.cuUserObjectRetain(kept, 2))
ok(cu.cuUserObjectRelease(kept, 2))
report["still_held"] = settled()
report["refusals"] = [code(cu.cuUserObjectCreate(4, fn, 1, 0)), code(cu.cuUserObjectCreate(4, fn, 0, NO_SYNC)),
                      code(cu.cuUserObjectRelease(kept, 5)), code(cu.cuGraphReleaseUserObject(second, kept, 1))]
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["held_by_exec"] == [] and report["last_gone"] == [1]
    assert report["too_many"] == 1 and report["moved_released"] == [1, 2]
    assert report["still_held"] == [1, 2] and report["refusals"] == [1, 1, 1, 1]


def test_captured_host_function_becomes_a_host_node(vgpud):
    """cuLaunchHostFunc on a capturing stream adds a host node to the capture instead of
    running: the function runs at each launch of the graph, between the work around it."""
    served_by_simulator(vgpud)
    code = PRELUDE + """
lib = ctypes.CDLL("libcuda.so.1")
h = lambda x: ctypes.c_void_p(int(x))
calls = []
@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def note(data):
    calls.append(data)
a = alloc()
ok(cu.cuStreamBeginCapture(stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_GLOBAL))
ok(cu.cuMemsetD8Async(a, 1, N, stream))
report = {"captured": lib.cuLaunchHostFunc(h(stream), note, ctypes.c_void_p(5))}
ok(cu.cuMemsetD8Async(a, 2, N, stream))
graph = ok(cu.cuStreamEndCapture(stream))
report["during_capture"] = list(calls)
nodes = ok(cu.cuGraphGetNodes(graph, 3))[0]
report["types"] = [int(ok(cu.cuGraphNodeGetType(n))) for n in nodes]
report["host_deps"] = ok(cu.cuGraphNodeGetDependencies(nodes[1], 0))[2]
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
for _ in range(2):
    assert lib.cuGraphLaunch(h(graph_exec), h(stream)) == 0
report["sync"] = lib.cuStreamSynchronize(h(stream))
report["calls"] = list(calls)
report["contents"] = download(a) == bytes([2] * N)
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["captured"] == 0 and report["during_capture"] == []
    assert report["types"] == [2, 3, 2] and report["host_deps"] == 1
    assert report["sync"] == 0 and report["calls"] == [5, 5] and report["contents"]


def test_memset_event_and_child_nodes_every_way(vgpud):
    """What every backend serves: memset node parameters read back and set on the graph and
    on an executable graph (contents checked), event record and wait nodes' events, a child
    graph node's graph and its executable-graph update."""
    code = PRELUDE + """
a = alloc()
graph = ok(cu.cuGraphCreate(0))
fill = ok(cu.cuGraphAddMemsetNode(graph, None, 0, memset_params(int(a), 5, N), ctx))
ok(cu.cuGraphMemsetNodeSetParams(fill, memset_params(int(a), 6, N)))
got = ok(cu.cuGraphMemsetNodeGetParams(fill))
report = {"got": [int(got.dst) == int(a), got.value, got.width]}
graph_exec = ok(cu.cuGraphInstantiate(graph, 0))
launch(graph_exec)
report["set"] = download(a)[:4].hex()
ok(cu.cuGraphExecMemsetNodeSetParams(graph_exec, fill, memset_params(int(a), 7, N), ctx))
launch(graph_exec)
report["exec_set"] = download(a)[:4].hex()
first, second = ok(cu.cuEventCreate(0)), ok(cu.cuEventCreate(0))
record = ok(cu.cuGraphAddEventRecordNode(graph, [fill], 1, first))
wait = ok(cu.cuGraphAddEventWaitNode(graph, [record], 1, first))
ok(cu.cuGraphEventRecordNodeSetEvent(record, second))
report["events"] = [int(ok(cu.cuGraphEventRecordNodeGetEvent(record))) == int(second),
                    int(ok(cu.cuGraphEventWaitNodeGetEvent(wait))) == int(first)]
child = ok(cu.cuGraphCreate(0))
inner = ok(cu.cuGraphAddMemsetNode(child, None, 0, memset_params(int(a) + 8, 9, 8), ctx))
node = ok(cu.cuGraphAddChildGraphNode(graph, [wait], 1, child))
embedded = ok(cu.cuGraphChildGraphNodeGetGraph(node))
report["embedded"] = [int(embedded) != int(child), ok(cu.cuGraphGetNodes(embedded))[1]]
with_child = ok(cu.cuGraphInstantiate(graph, 0))
ok(cu.cuGraphMemsetNodeSetParams(inner, memset_params(int(a) + 8, 0x0A, 8)))
ok(cu.cuGraphExecChildGraphNodeSetParams(with_child, node, child))
launch(with_child)
report["child"] = download(a)[:20].hex()
print(json.dumps(report))
"""
    report = run_json(code, vgpud.env)
    assert report["got"] == [True, 6, 4096] and report["set"] == "06060606" and report["exec_set"] == "07070707"
    assert report["events"] == [True, True] and report["embedded"] == [True, 1]
    assert report["child"] == "06" * 8 + "0a" * 8 + "06" * 4
