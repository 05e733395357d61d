"""CUDA graphs built by hand through cuda-python: every node kind vgpud serves does its work,
in dependency order, when the graph is launched (contents checked byte for byte),
per-node setters change graphs and executable graphs apart, structure queries answer as
cuda.h describes, and capture into an existing graph follows the dependencies it is given."""

from __future__ import annotations

from tests.conftest import CUDA_PYTHON, run_json

EVERY_WAY = True  # also through a relay, two joined GPU hosts and the cuda backend (conftest)

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

# host memory: page-locked in, ordinary out, in one graph
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
report["host"] = plain.raw == pattern

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
    assert report == {"a": True, "b": True, "c": True, "host": True, "box": True}


def test_setters_change_the_graph_and_the_executable_graph_apart(vgpud):
    """cuGraph*NodeSetParams change the graph (not an executable made before), cuGraphExec*
    change only the executable graph; get functions read back what was set; disabled nodes
    do nothing; cuGraphExecUpdate takes a same-shaped graph's parameters and refuses another
    shape; event record and wait nodes record and wait."""
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
