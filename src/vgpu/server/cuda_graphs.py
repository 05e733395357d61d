"""Stream capture and CUDA graphs on the simulated GPU: work queued on a capturing stream
becomes graph nodes instead of running; graphs are also built node by node (kernel, memset,
memcpy, host, event, child graph, memory allocation and free nodes), queried, cloned and
changed; an executable graph holds its own copies of the nodes, and a launch carries out
their work in dependency order (copies and memsets exactly, kernels recorded as graph
launches). Host nodes run in the client: the shim's cuGraphLaunch (native/cuda/graphs.c)
resumes a launch after each one. Capture answers follow what a real H200 gave
(tests/data/h200_driver_facts.txt); the rest follows cuda.h's documentation.

A mixin of CudaService: ``_capture_node`` is how the service's launches, copies, memsets and
event records land in a capture.
"""

from __future__ import annotations

import ctypes
import itertools
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

from vgpu.api.manifest import load
from vgpu.device.gpu import OutOfMemory
from vgpu.server.dispatch import Caller
from vgpu.server.state import Later, Session

API = load("cuda")
C = API.constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
CAPTURE_UNSUPPORTED = C["CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"]
STATUS_NONE = C["CU_STREAM_CAPTURE_STATUS_NONE"]
STATUS_ACTIVE = C["CU_STREAM_CAPTURE_STATUS_ACTIVE"]
STATUS_INVALIDATED = C["CU_STREAM_CAPTURE_STATUS_INVALIDATED"]

#: replays a node on a stream of the launching process; returns a CUresult
Replay = Callable[[Caller, Any], int]
#: sizeof(CUgraphEdgeData)
EDGE_DATA_SIZE = 8
#: the node kinds an executable graph can disable (cuGraphNodeSetEnabled)
ENABLEABLE = {C["CU_GRAPH_NODE_TYPE_KERNEL"], C["CU_GRAPH_NODE_TYPE_MEMSET"], C["CU_GRAPH_NODE_TYPE_MEMCPY"]}
MEMORY_NODES = {C["CU_GRAPH_NODE_TYPE_MEM_ALLOC"], C["CU_GRAPH_NODE_TYPE_MEM_FREE"]}
#: the launch attributes a kernel node keeps (cuGraphKernelNodeSetAttribute)
KERNEL_NODE_ATTRIBUTES = {C[f"CU_LAUNCH_ATTRIBUTE_{name}"] for name in (
    "ACCESS_POLICY_WINDOW", "COOPERATIVE", "CLUSTER_DIMENSION", "CLUSTER_SCHEDULING_POLICY_PREFERENCE", "PRIORITY",
    "MEM_SYNC_DOMAIN_MAP", "MEM_SYNC_DOMAIN", "PREFERRED_SHARED_MEMORY_CARVEOUT", "DEVICE_UPDATABLE_KERNEL_NODE")}
GRAPH_MEM_HIGH = {C["CU_GRAPH_MEM_ATTR_USED_MEM_HIGH"], C["CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH"]}


def _copy(params: Any) -> Any:
    """A ctypes struct's own copy (what the caller passed may be reused)."""
    return type(params).from_buffer_copy(params)


@dataclass(eq=False)
class GraphNode:
    id: int
    type: int                     # CUgraphNodeType
    dependencies: list["GraphNode"]
    replay: Replay | None = None  # None: an empty node
    #: what identifies the node's work for cuGraphExecUpdate (its kind and function)
    signature: tuple = ()
    #: what the node's get and set functions read and change (kind by kind: a memset's or a
    #: copy's parameters, an event, a child graph, a graph allocation); None where unknown
    params: Any = None
    graph: "Graph | None" = None
    #: cuGraphNodeGetLocalId's answer: the node's number in its graph
    local_id: int = 0
    #: a dependency's id -> its CUgraphEdgeData bytes, for edges that are not the default
    edge_data: dict[int, bytes] = field(default_factory=dict)
    #: the node this one was copied from (cloned graphs, executable graphs)
    origin: "GraphNode | None" = None
    enabled: bool = True
    #: kernel node attributes set (CUkernelNodeAttrID -> the value's bytes)
    attributes: dict[int, bytes] = field(default_factory=dict)

    @property
    def owner(self) -> int | None:
        return self.graph.owner if self.graph is not None else None


@dataclass(eq=False)
class Graph:
    id: int
    owner: int
    nodes: list[GraphNode] = field(default_factory=list)
    #: cuGraphGetId's answer
    serial: int = 0
    #: the next node's local id
    next_local: int = 0
    #: original node id -> its copy here (a clone: cuGraphNodeFindInClone)
    clone_of: dict[int, GraphNode] = field(default_factory=dict)
    #: the child graph node this graph belongs to, if it is one
    parent: GraphNode | None = None

    def topology(self) -> list[tuple]:
        index = {node.id: i for i, node in enumerate(self.nodes)}
        return [(n.type, n.signature, tuple(sorted(index[d.id] for d in n.dependencies))) for n in self.nodes]


@dataclass(eq=False)
class GraphExec:
    id: int
    owner: int
    nodes: list[GraphNode]        # copies of the graph's nodes, in an order that honours dependencies
    topology: list[tuple]
    #: the graph's node id -> its copy here (what per-node setters are given)
    by_origin: dict[int, GraphNode] = field(default_factory=dict)
    #: the copies in the graph's node order (what cuGraphExecUpdate pairs with another graph's)
    positions: list[GraphNode] = field(default_factory=list)
    flags: int = 0
    serial: int = 0


@dataclass
class Capture:
    """A stream capture in progress: the graph it builds and the nodes later work follows."""

    id: int
    graph: Graph
    mode: int
    origin: Any                   # the stream that began it
    last: list[GraphNode] = field(default_factory=list)
    invalidated: bool = False
    #: captured into a graph the caller made (cuStreamBeginCaptureToGraph), which outlives a failure
    into_existing: bool = False
    #: edge data for the edges from ``last`` to the next captured node (cuStreamBeginCaptureToGraph)
    pending_edges: list[bytes] = field(default_factory=list)


@dataclass(eq=False)
class GraphAllocation:
    """Memory a graph's allocation node gives: its address is fixed when the node is made (the
    memory is reserved then); it is in use from the node's launch until it is freed (a free
    node, cuMemFree or cuMemFreeAsync, or the next launch of an executable graph instantiated
    to free on launch)."""

    address: int
    size: int
    gpu: Any
    owner: int
    params: Any                   # the CUDA_MEM_ALLOC_NODE_PARAMS given, with dptr filled in
    live: bool = False


class Graphs:
    """cuStreamBeginCapture, cuStreamEndCapture, cuGraph* (mixed into CudaService)."""

    def _init_graphs(self) -> None:
        self.graphs: dict[int, Graph] = {}
        self.graph_execs: dict[int, GraphExec] = {}
        self.graph_nodes: dict[int, GraphNode] = {}
        #: stream id -> its capture (joined streams share their origin's)
        self.captures: dict[int, Capture] = {}
        #: cuGraphGetId's and cuGraphExecGetId's numbers
        self._graph_serials = itertools.count(1)
        #: resume token -> a launch waiting for its host node (executable graph, stream, nodes left)
        self.graph_runs: dict[int, tuple[GraphExec, Any, list[GraphNode]]] = {}
        #: address -> graph allocation (allocation nodes)
        self.graph_allocations: dict[int, GraphAllocation] = {}
        #: (process, GPU index) -> graph memory high-water marks
        self.graph_memory_highs: dict[tuple[int, int], list[int]] = {}

    def _forget_graphs(self, session: Session) -> None:
        for table in (self.graphs, self.graph_execs):
            for key in [k for k, v in table.items() if v.owner == session.id]:
                del table[key]
        live = {node.id for graph in self.graphs.values() for node in graph.nodes}
        for key in [k for k in self.graph_nodes if k not in live]:
            del self.graph_nodes[key]
        for key in [k for k, capture in self.captures.items() if capture.graph.owner == session.id]:
            del self.captures[key]
        self._forget_graph_memory(session)

    # capture -----------------------------------------------------------------------------
    def capturing(self, stream: Any) -> Capture | None:
        return self.captures.get(stream.id) if stream is not None and stream.id else None

    def _new_graph(self, owner: int) -> Graph:
        graph = Graph(next(self._ids), owner, serial=next(self._graph_serials))
        self.graphs[graph.id] = graph
        return graph

    def _add_node(self, graph: Graph, node_type: int, dependencies: list[GraphNode], replay: Replay | None,
                  signature: tuple = (), params: Any = None) -> GraphNode:
        node = GraphNode(next(self._ids), node_type, list(dependencies), replay, signature, params, graph,
                         graph.next_local)
        graph.next_local += 1
        graph.nodes.append(node)
        self.graph_nodes[node.id] = node
        return node

    def _capture_node(self, stream: Any, node_type: int, replay: Replay | None, signature: tuple = (),
                      params: Any = None) -> int:
        """Work queued on a capturing stream: a node after the capture's last ones."""
        capture = self.capturing(stream)
        if capture.invalidated:
            return C["CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"]
        node = self._add_node(capture.graph, node_type, capture.last, replay, signature, params)
        for before, data in zip(capture.last, capture.pending_edges):
            if any(data):
                node.edge_data[before.id] = data
        capture.last, capture.pending_edges = [node], []
        return SUCCESS

    def _invalidate(self, capture: Capture) -> int:
        """A synchronising call met a capture: the capture is spoiled, the call refused."""
        capture.invalidated = True
        return CAPTURE_UNSUPPORTED

    def _session_capture(self, c: Caller) -> Capture | None:
        return next((capture for capture in self.captures.values() if capture.graph.owner == c.session.id
                     and capture.mode == C["CU_STREAM_CAPTURE_MODE_GLOBAL"]), None)

    def _begin_capture(self, c: Caller, stream: Any, mode: int, graph: Graph | None,
                       after: list[GraphNode]) -> int:
        if stream.id == 0:
            return CAPTURE_UNSUPPORTED  # the default (legacy) stream cannot be captured
        if mode not in (C["CU_STREAM_CAPTURE_MODE_GLOBAL"], C["CU_STREAM_CAPTURE_MODE_THREAD_LOCAL"],
                        C["CU_STREAM_CAPTURE_MODE_RELAXED"]):
            return INVALID_VALUE
        if self.capturing(stream) is not None:
            return C["CUDA_ERROR_ILLEGAL_STATE"]
        into = graph if graph is not None else self._new_graph(c.session.id)
        # the capture's id is its graph's: the shim's cuStreamGetCaptureInfo_v2 hands it out as the graph
        self.captures[stream.id] = Capture(into.id, into, mode, stream, list(after),
                                           into_existing=graph is not None)
        self._forget_launch_shapes()  # launches on the stream are captured now
        return SUCCESS

    def cuStreamBeginCapture_v2(self, c: Caller, hStream: Any, mode: int) -> int:
        return self._begin_capture(c, hStream, mode, None, [])

    cuStreamBeginCapture = cuStreamBeginCapture_v2

    def cuStreamBeginCaptureToGraph(self, c: Caller, hStream: Any, hGraph: Graph, dependencies: Any,
                                    dependencyData: Any, numDependencies: int, mode: int) -> int:
        """Capture into a graph the caller made, the first captured work after ``dependencies``."""
        after = self._dependencies(hGraph, dependencies, numDependencies)
        if after is None:
            return INVALID_VALUE
        rc = self._begin_capture(c, hStream, mode, hGraph, after)
        if rc == SUCCESS and dependencyData is not None:
            self.captures[hStream.id].pending_edges = [bytes(data) for data in dependencyData]
        return rc

    def cuStreamUpdateCaptureDependencies_v2(self, c: Caller, hStream: Any, dependencies: Any, dependencyData: Any,
                                             numDependencies: int, flags: int) -> int:
        """The nodes the stream's next captured work follows: these added (ADD) or only these (SET)."""
        capture = self.capturing(hStream)
        if capture is None:
            return C["CUDA_ERROR_ILLEGAL_STATE"]
        if flags not in (C["CU_STREAM_ADD_CAPTURE_DEPENDENCIES"], C["CU_STREAM_SET_CAPTURE_DEPENDENCIES"]):
            return INVALID_VALUE
        nodes = self._dependencies(capture.graph, dependencies, numDependencies)
        if nodes is None:
            return INVALID_VALUE
        if flags == C["CU_STREAM_SET_CAPTURE_DEPENDENCIES"]:
            capture.last = list(nodes)
        else:
            capture.last += [node for node in nodes if node not in capture.last]
        return SUCCESS

    def cuStreamUpdateCaptureDependencies(self, c: Caller, hStream: Any, dependencies: Any, numDependencies: int,
                                          flags: int) -> int:
        return self.cuStreamUpdateCaptureDependencies_v2(c, hStream, dependencies, None, numDependencies, flags)

    def cuStreamEndCapture(self, c: Caller, hStream: Any, phGraph: Any) -> int:
        capture = self.capturing(hStream)
        if capture is None or capture.origin is not hStream:
            return C["CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"] if capture else C["CUDA_ERROR_ILLEGAL_STATE"]
        for key in [k for k, v in self.captures.items() if v is capture]:
            del self.captures[key]
        if capture.invalidated:
            if not capture.into_existing:
                self._drop_graph(capture.graph)
            return C["CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"]
        phGraph.value = capture.graph
        return SUCCESS

    def cuStreamIsCapturing(self, c: Caller, hStream: Any, captureStatus: Any) -> int:
        capture = self.capturing(hStream)
        captureStatus.value = STATUS_NONE if capture is None else \
            STATUS_INVALIDATED if capture.invalidated else STATUS_ACTIVE
        return SUCCESS

    def cuStreamGetCaptureInfo(self, c: Caller, hStream: Any, captureStatus_out: Any, id_out: Any) -> int:
        self.cuStreamIsCapturing(c, hStream, captureStatus_out)
        if id_out is not None:
            capture = self.capturing(hStream)
            id_out.value = capture.id if capture is not None else 0
        return SUCCESS

    # graphs ------------------------------------------------------------------------------
    def cuGraphCreate(self, c: Caller, phGraph: Any, flags: int) -> int:
        if flags:
            return INVALID_VALUE
        phGraph.value = self._new_graph(c.session.id)
        return SUCCESS

    def _drop_graph(self, graph: Graph) -> None:
        """A graph and its nodes go, child graphs with them."""
        self.graphs.pop(graph.id, None)
        for node in graph.nodes:
            self.graph_nodes.pop(node.id, None)
            if node.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
                self._drop_graph(node.params)

    def cuGraphDestroy(self, c: Caller, hGraph: Graph) -> int:
        if hGraph.parent is not None:
            return INVALID_VALUE  # a child graph goes with its node
        self._drop_graph(hGraph)
        return SUCCESS

    def _dependencies(self, graph: Graph, dependencies: list[GraphNode] | None, count: int) -> list[GraphNode] | None:
        found = dependencies or []
        if len(found) != count or any(node.graph is not graph for node in found) or len(set(map(id, found))) != count:
            return None
        return found

    def _node_added(self, out: Any, graph: Graph, dependencies: Any, count: int, node_type: int,
                    params: Any, signature: tuple) -> int:
        """A node of a kind whose work follows from its parameters."""
        after = self._dependencies(graph, dependencies, count)
        if after is None:
            return INVALID_VALUE
        out.value = self._add_node(graph, node_type, after, self._replay_of(node_type, params), signature, params)
        return SUCCESS

    def cuGraphAddEmptyNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                            numDependencies: int) -> int:
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies, C["CU_GRAPH_NODE_TYPE_EMPTY"],
                                None, ("empty",))

    def _replay_of(self, node_type: int, params: Any) -> Replay | None:
        """What a node does when its graph is launched, from its parameters."""
        if node_type == C["CU_GRAPH_NODE_TYPE_KERNEL"]:  # (function, grid, block, shared bytes, packed args, flags)
            return lambda caller, stream: self._run_kernel(caller, stream, *params, graph=True)
        if node_type == C["CU_GRAPH_NODE_TYPE_MEMSET"]:
            return lambda caller, stream: self._memset_node(caller, stream, params)
        if node_type == C["CU_GRAPH_NODE_TYPE_MEMCPY"]:
            return lambda caller, stream: self._memcpy_node(caller, stream, params)
        if node_type == C["CU_GRAPH_NODE_TYPE_EVENT_RECORD"]:
            return lambda caller, stream: self.cuEventRecord(caller, params, stream)
        if node_type == C["CU_GRAPH_NODE_TYPE_WAIT_EVENT"]:
            return lambda caller, stream: self.cuStreamWaitEvent(caller, stream, params, 0)
        if node_type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
            return lambda caller, stream: self._run_nodes(caller, stream, self._ordered(params) or [])
        if node_type == C["CU_GRAPH_NODE_TYPE_MEM_ALLOC"]:
            return lambda caller, stream: self._graph_allocation_made(caller, stream, params)
        if node_type == C["CU_GRAPH_NODE_TYPE_MEM_FREE"]:
            return lambda caller, stream: self._graph_allocation_freed(caller, stream, params)
        return None

    # memset nodes ------------------------------------------------------------------------
    @staticmethod
    def _memset_valid(p: Any) -> bool:
        return p is not None and p.elementSize in (1, 2, 4) and p.width and p.height and \
            (p.height == 1 or p.pitch >= p.width * p.elementSize)

    def _memset_node(self, c: Caller, stream: Any, p: Any) -> int:
        size = p.elementSize
        pattern = (p.value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        for row in range(p.height):
            rc = self._memset(c, stream, p.dst + row * p.pitch, pattern, p.width)
            if rc != SUCCESS:
                return rc
        return SUCCESS

    def cuGraphAddMemsetNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                             numDependencies: int, memsetParams: Any, ctx: int) -> int:
        if not self._memset_valid(memsetParams):
            return INVALID_VALUE
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies, C["CU_GRAPH_NODE_TYPE_MEMSET"],
                                _copy(memsetParams), ("memset",))

    def _capture_memset(self, stream: Any, dst: int, pattern: bytes, count: int) -> int:
        """A memset on a capturing stream: a memset node (one row of count elements)."""
        memset = C["CU_GRAPH_NODE_TYPE_MEMSET"]
        p = API.ctype_named("CUDA_MEMSET_NODE_PARAMS")(dst, 0, int.from_bytes(pattern, "little"), len(pattern), count, 1)
        return self._capture_node(stream, memset, self._replay_of(memset, p), ("memset",), p)

    def _params_set(self, node: GraphNode | None, node_type: int, params: Any) -> int:
        if node is None or node.type != node_type:
            return INVALID_VALUE
        node.params = params
        node.replay = self._replay_of(node_type, params)
        return SUCCESS

    def _params_out(self, node: GraphNode, node_type: int, out: Any) -> int:
        if node.type != node_type:
            return INVALID_VALUE
        if node.params is None:
            return C["CUDA_ERROR_NOT_SUPPORTED"]  # a captured copy: vgpud keeps only what it does
        ctypes.memmove(ctypes.addressof(out), ctypes.addressof(node.params), ctypes.sizeof(out))
        return SUCCESS

    def cuGraphMemsetNodeGetParams(self, c: Caller, hNode: GraphNode, nodeParams: Any) -> int:
        return self._params_out(hNode, C["CU_GRAPH_NODE_TYPE_MEMSET"], nodeParams)

    def cuGraphMemsetNodeSetParams(self, c: Caller, hNode: GraphNode, nodeParams: Any) -> int:
        if not self._memset_valid(nodeParams):
            return INVALID_VALUE
        return self._params_set(hNode, C["CU_GRAPH_NODE_TYPE_MEMSET"], _copy(nodeParams))

    def cuGraphExecMemsetNodeSetParams(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode, memsetParams: Any,
                                       ctx: int) -> int:
        if not self._memset_valid(memsetParams):
            return INVALID_VALUE
        return self._params_set(hGraphExec.by_origin.get(hNode.id), C["CU_GRAPH_NODE_TYPE_MEMSET"],
                                _copy(memsetParams))

    # memcpy nodes ------------------------------------------------------------------------
    def _copy_sides(self, c: Caller, p: Any) -> list[tuple[int, int]] | None:
        """A copy's (dst, src) row addresses, or None where the copy is not one vgpud can make:
        arrays, or ordinary host memory vgpud cannot reach (a relayed client) or on both sides."""
        if p is None or not p.WidthInBytes:
            return None
        sides = []
        for prefix in ("dst", "src"):
            kind = getattr(p, f"{prefix}MemoryType")
            if kind == C["CU_MEMORYTYPE_HOST"]:
                base = getattr(p, f"{prefix}Host") or 0
            elif kind in (C["CU_MEMORYTYPE_DEVICE"], C["CU_MEMORYTYPE_UNIFIED"]):
                base = getattr(p, f"{prefix}Device")
            else:
                return None
            pitch = getattr(p, f"{prefix}Pitch") or p.WidthInBytes
            height = getattr(p, f"{prefix}Height") or max(p.Height, 1)
            if pitch < p.WidthInBytes or (p.Depth > 1 and height < p.Height):
                return None
            start = base + getattr(p, f"{prefix}XInBytes") + getattr(p, f"{prefix}Y") * pitch + \
                getattr(p, f"{prefix}Z") * pitch * height
            sides.append([start + z * pitch * height + y * pitch for z in range(max(p.Depth, 1))
                          for y in range(max(p.Height, 1))])
        dst, src = sides
        remote = [address for address in (dst[0], src[0]) if not self._device_side(c, address)]
        windows = c.session.windows
        if len(remote) == 2 or (remote and (windows is None or not windows.direct)):
            return None
        return list(zip(dst, src))

    def _device_side(self, c: Caller, address: int) -> bool:
        """Device memory, or host memory in one of the caller's shared windows (page-locked, managed)."""
        windows = c.session.windows
        return self._gpu_of_address(address) is not None or (windows is not None and windows.find(address) is not None)

    def _memcpy_node(self, c: Caller, stream: Any, p: Any) -> int:
        rows = self._copy_sides(c, p)
        if rows is None:
            return INVALID_VALUE
        width, owner, windows = p.WidthInBytes, c.session.id, c.session.windows
        for dst, src in rows:
            if not self._device_side(c, src):  # ordinary host memory, read in place
                rc = self._timed(c, stream, self._pcie_seconds(self._gpu_of_address(dst), width),
                                 lambda m, d=dst, s=src: m.write(owner, d, windows.remote(s, width)), dst)
            elif not self._device_side(c, dst):
                rc = self._timed(c, stream, self._pcie_seconds(self._gpu_of_address(src), width),
                                 lambda m, d=dst, s=src: m.read(owner, s, width, windows.remote(d, width)), src)
            else:
                rc = self.cuMemcpyDtoDAsync_v2(c, dst, src, width, stream)
            if rc != SUCCESS:
                return rc
        return SUCCESS

    def cuGraphAddMemcpyNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                             numDependencies: int, copyParams: Any, ctx: int) -> int:
        if self._copy_sides(c, copyParams) is None:
            return INVALID_VALUE
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies, C["CU_GRAPH_NODE_TYPE_MEMCPY"],
                                _copy(copyParams), ("memcpy",))

    def cuGraphMemcpyNodeGetParams(self, c: Caller, hNode: GraphNode, nodeParams: Any) -> int:
        return self._params_out(hNode, C["CU_GRAPH_NODE_TYPE_MEMCPY"], nodeParams)

    def cuGraphMemcpyNodeSetParams(self, c: Caller, hNode: GraphNode, nodeParams: Any) -> int:
        if self._copy_sides(c, nodeParams) is None:
            return INVALID_VALUE
        return self._params_set(hNode, C["CU_GRAPH_NODE_TYPE_MEMCPY"], _copy(nodeParams))

    def cuGraphExecMemcpyNodeSetParams(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode, copyParams: Any,
                                       ctx: int) -> int:
        if self._copy_sides(c, copyParams) is None:
            return INVALID_VALUE
        return self._params_set(hGraphExec.by_origin.get(hNode.id), C["CU_GRAPH_NODE_TYPE_MEMCPY"], _copy(copyParams))

    # event record and wait nodes ------------------------------------------------------------
    def cuGraphAddEventRecordNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                                  numDependencies: int, event: Any) -> int:
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies,
                                C["CU_GRAPH_NODE_TYPE_EVENT_RECORD"], event, ("event",))

    def cuGraphAddEventWaitNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                                numDependencies: int, event: Any) -> int:
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies, C["CU_GRAPH_NODE_TYPE_WAIT_EVENT"],
                                event, ("wait",))

    def _event_out(self, node: GraphNode, node_type: int, out: Any) -> int:
        if node.type != node_type or node.params is None:
            return INVALID_VALUE
        out.value = node.params
        return SUCCESS

    def cuGraphEventRecordNodeGetEvent(self, c: Caller, hNode: GraphNode, event_out: Any) -> int:
        return self._event_out(hNode, C["CU_GRAPH_NODE_TYPE_EVENT_RECORD"], event_out)

    def cuGraphEventWaitNodeGetEvent(self, c: Caller, hNode: GraphNode, event_out: Any) -> int:
        return self._event_out(hNode, C["CU_GRAPH_NODE_TYPE_WAIT_EVENT"], event_out)

    def cuGraphEventRecordNodeSetEvent(self, c: Caller, hNode: GraphNode, event: Any) -> int:
        return self._params_set(hNode, C["CU_GRAPH_NODE_TYPE_EVENT_RECORD"], event)

    def cuGraphEventWaitNodeSetEvent(self, c: Caller, hNode: GraphNode, event: Any) -> int:
        return self._params_set(hNode, C["CU_GRAPH_NODE_TYPE_WAIT_EVENT"], event)

    def cuGraphExecEventRecordNodeSetEvent(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode,
                                           event: Any) -> int:
        return self._params_set(hGraphExec.by_origin.get(hNode.id), C["CU_GRAPH_NODE_TYPE_EVENT_RECORD"], event)

    def cuGraphExecEventWaitNodeSetEvent(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode,
                                         event: Any) -> int:
        return self._params_set(hGraphExec.by_origin.get(hNode.id), C["CU_GRAPH_NODE_TYPE_WAIT_EVENT"], event)

    # child graph nodes ---------------------------------------------------------------------
    def cuGraphAddChildGraphNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                                 numDependencies: int, childGraph: Graph) -> int:
        """The node holds a clone of the child graph, made now (later changes to it do not count)."""
        if childGraph is hGraph or self._has_graph_memory(childGraph):
            return INVALID_VALUE
        after = self._dependencies(hGraph, dependencies, numDependencies)
        if after is None:
            return INVALID_VALUE
        child = self._clone(childGraph, c.session.id)
        node = self._add_node(hGraph, C["CU_GRAPH_NODE_TYPE_GRAPH"], after,
                              self._replay_of(C["CU_GRAPH_NODE_TYPE_GRAPH"], child),
                              ("graph", tuple(child.topology())), child)
        child.parent = node
        phGraphNode.value = node
        return SUCCESS

    def cuGraphChildGraphNodeGetGraph(self, c: Caller, hNode: GraphNode, phGraph: Any) -> int:
        if hNode.type != C["CU_GRAPH_NODE_TYPE_GRAPH"]:
            return INVALID_VALUE
        phGraph.value = hNode.params
        return SUCCESS

    def cuGraphExecChildGraphNodeSetParams(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode,
                                           childGraph: Graph) -> int:
        """The executable's copy of the child graph takes the new graph's parameters, which must
        have the same topology."""
        node = hGraphExec.by_origin.get(hNode.id)
        if node is None or node.type != C["CU_GRAPH_NODE_TYPE_GRAPH"] or \
                childGraph.topology() != node.params.topology():
            return INVALID_VALUE
        for mine, theirs in zip(node.params.nodes, childGraph.nodes):
            self._take_params(mine, theirs)
        return SUCCESS

    def _take_params(self, mine: GraphNode, theirs: GraphNode) -> None:
        """An executable graph's node takes another node's work (an update)."""
        if theirs.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
            for inner, other in zip(mine.params.nodes, theirs.params.nodes):
                self._take_params(inner, other)
            return
        mine.params, mine.replay, mine.signature = theirs.params, theirs.replay, theirs.signature
        mine.attributes = dict(theirs.attributes)

    # structure: dependencies, edges, queries ------------------------------------------------------
    def cuGraphAddDependencies_v2(self, c: Caller, hGraph: Graph, from_: Any, to: Any, edgeData: Any,
                                  numDependencies: int) -> int:
        if from_ is None or to is None or len(from_) != numDependencies or len(to) != numDependencies:
            return INVALID_VALUE
        pairs = list(zip(from_, to))
        if any(a.graph is not hGraph or b.graph is not hGraph or a is b or a in b.dependencies for a, b in pairs):
            return INVALID_VALUE
        for index, (before, after) in enumerate(pairs):
            after.dependencies.append(before)
            if edgeData is not None and any(bytes(edgeData[index])):
                after.edge_data[before.id] = bytes(edgeData[index])
        return SUCCESS

    def cuGraphAddDependencies(self, c: Caller, hGraph: Graph, from_: Any, to: Any, numDependencies: int) -> int:
        return self.cuGraphAddDependencies_v2(c, hGraph, from_, to, None, numDependencies)

    def cuGraphRemoveDependencies_v2(self, c: Caller, hGraph: Graph, from_: Any, to: Any, edgeData: Any,
                                     numDependencies: int) -> int:
        """Each edge must exist (with the same edge data); none is removed unless all can be."""
        if from_ is None or to is None or len(from_) != numDependencies or len(to) != numDependencies:
            return INVALID_VALUE
        pairs = list(zip(from_, to))
        for index, (before, after) in enumerate(pairs):
            data = bytes(edgeData[index]) if edgeData is not None else bytes(EDGE_DATA_SIZE)
            if after.graph is not hGraph or before not in after.dependencies or \
                    after.edge_data.get(before.id, bytes(EDGE_DATA_SIZE)) != data:
                return INVALID_VALUE
        for before, after in pairs:
            after.dependencies.remove(before)
            after.edge_data.pop(before.id, None)
        return SUCCESS

    def cuGraphRemoveDependencies(self, c: Caller, hGraph: Graph, from_: Any, to: Any, numDependencies: int) -> int:
        return self.cuGraphRemoveDependencies_v2(c, hGraph, from_, to, None, numDependencies)

    @staticmethod
    def _listed(items: list[tuple[Any, ...]], outputs: list[Any], edge_data: Any, count: Any) -> int:
        """Hand out a list of (handle..., edge data) entries: with no output arrays only their
        number; otherwise up to count entries, NULL past the end, and how many were given.
        Without an edge data array every edge must have the default data (else a lossy query)."""
        if edge_data is None and any(entry[-1] for entry in items):
            return C["CUDA_ERROR_LOSSY_QUERY"]
        if all(out is None for out in outputs):
            count.value = len(items)
            return SUCCESS
        if any(out is None for out in outputs):
            return INVALID_VALUE
        capacity = count.value
        given = items[:capacity]
        for position, out in enumerate(outputs):
            out.value = [entry[position] for entry in given] + [None] * (capacity - len(given))
        if edge_data is not None:
            for index, entry in enumerate(given):
                ctypes.memmove(ctypes.addressof(edge_data[index]), entry[-1] or bytes(EDGE_DATA_SIZE), EDGE_DATA_SIZE)
        count.value = len(given)
        return SUCCESS

    def cuGraphGetEdges_v2(self, c: Caller, hGraph: Graph, from_: Any, to: Any, edgeData: Any, numEdges: Any) -> int:
        edges = [(before, node, node.edge_data.get(before.id)) for node in hGraph.nodes for before in node.dependencies]
        return self._listed(edges, [from_, to], edgeData, numEdges)

    def cuGraphGetEdges(self, c: Caller, hGraph: Graph, from_: Any, to: Any, numEdges: Any) -> int:
        return self.cuGraphGetEdges_v2(c, hGraph, from_, to, None, numEdges)

    def cuGraphNodeGetDependencies_v2(self, c: Caller, hNode: GraphNode, dependencies: Any, edgeData: Any,
                                      numDependencies: Any) -> int:
        found = [(before, hNode.edge_data.get(before.id)) for before in hNode.dependencies]
        return self._listed(found, [dependencies], edgeData, numDependencies)

    def cuGraphNodeGetDependencies(self, c: Caller, hNode: GraphNode, dependencies: Any, numDependencies: Any) -> int:
        return self.cuGraphNodeGetDependencies_v2(c, hNode, dependencies, None, numDependencies)

    def cuGraphNodeGetDependentNodes_v2(self, c: Caller, hNode: GraphNode, dependentNodes: Any, edgeData: Any,
                                        numDependentNodes: Any) -> int:
        found = [(node, node.edge_data.get(hNode.id)) for node in hNode.graph.nodes if hNode in node.dependencies]
        return self._listed(found, [dependentNodes], edgeData, numDependentNodes)

    def cuGraphNodeGetDependentNodes(self, c: Caller, hNode: GraphNode, dependentNodes: Any,
                                     numDependentNodes: Any) -> int:
        return self.cuGraphNodeGetDependentNodes_v2(c, hNode, dependentNodes, None, numDependentNodes)

    def cuGraphGetRootNodes(self, c: Caller, hGraph: Graph, rootNodes: Any, numRootNodes: Any) -> int:
        return self._listed([(node, None) for node in hGraph.nodes if not node.dependencies], [rootNodes], None,
                            numRootNodes)

    def cuGraphGetNodes(self, c: Caller, hGraph: Graph, nodes: Any, numNodes: Any) -> int:
        """Without ``nodes`` the count; with it, up to numNodes nodes and how many were given."""
        return self._listed([(node, None) for node in hGraph.nodes], [nodes], None, numNodes)

    def cuGraphNodeGetType(self, c: Caller, hNode: GraphNode, type: Any) -> int:
        type.value = hNode.type
        return SUCCESS

    def cuGraphNodeGetContainingGraph(self, c: Caller, hNode: GraphNode, phGraph: Any) -> int:
        phGraph.value = hNode.graph
        return SUCCESS

    def cuGraphNodeGetLocalId(self, c: Caller, hNode: GraphNode, nodeId: Any) -> int:
        nodeId.value = hNode.local_id
        return SUCCESS

    def cuGraphNodeGetToolsId(self, c: Caller, hNode: GraphNode, toolsNodeId: Any) -> int:
        """Unique in the process: the graph's id above the node's local id."""
        toolsNodeId.value = hNode.graph.serial << 32 | hNode.local_id
        return SUCCESS

    def cuGraphGetId(self, c: Caller, hGraph: Graph, graphId: Any) -> int:
        graphId.value = hGraph.serial
        return SUCCESS

    def cuGraphExecGetId(self, c: Caller, hGraphExec: GraphExec, graphId: Any) -> int:
        graphId.value = hGraphExec.serial
        return SUCCESS

    def cuGraphDestroyNode(self, c: Caller, hNode: GraphNode) -> int:
        """The node and its edges leave its graph."""
        graph = hNode.graph
        if self._has_graph_memory(graph):
            return C["CUDA_ERROR_NOT_SUPPORTED"]  # graphs with memory nodes keep their nodes and edges
        graph.nodes.remove(hNode)
        for node in graph.nodes:
            if hNode in node.dependencies:
                node.dependencies.remove(hNode)
                node.edge_data.pop(hNode.id, None)
        self.graph_nodes.pop(hNode.id, None)
        if hNode.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
            self._drop_graph(hNode.params)
        hNode.graph = None
        return SUCCESS

    # clones -------------------------------------------------------------------------------------
    def _copy_node(self, node: GraphNode, graph: Graph | None, copies: dict[int, GraphNode], owner: int,
                   register: bool) -> GraphNode:
        params = node.params
        if node.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
            params = self._clone(node.params, owner, register)
        replay = self._replay_of(node.type, params) if params is not None else node.replay
        copy = GraphNode(next(self._ids), node.type, [copies[d.id] for d in node.dependencies], replay,
                         node.signature, params, graph, node.local_id,
                         {copies[k].id: v for k, v in node.edge_data.items()}, node, node.enabled,
                         dict(node.attributes))
        if node.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
            params.parent = copy
        copies[node.id] = copy
        return copy

    def _clone(self, original: Graph, owner: int, register: bool = True) -> Graph:
        """A copy of a graph with nodes of its own (child graphs copied too), in the same order."""
        graph = Graph(next(self._ids), owner, serial=next(self._graph_serials), next_local=original.next_local)
        copies: dict[int, GraphNode] = {}
        for node in self._ordered(original, strict=False):
            self._copy_node(node, graph, copies, owner, register)
        graph.nodes = [copies[node.id] for node in original.nodes]
        graph.clone_of = copies
        if register:
            self.graphs[graph.id] = graph
            self.graph_nodes.update({node.id: node for node in graph.nodes})
        return graph

    def cuGraphClone(self, c: Caller, phGraphClone: Any, originalGraph: Graph) -> int:
        if self._has_graph_memory(originalGraph):
            return C["CUDA_ERROR_NOT_SUPPORTED"]  # graphs with memory nodes cannot be cloned
        phGraphClone.value = self._clone(originalGraph, c.session.id)
        return SUCCESS

    def cuGraphNodeFindInClone(self, c: Caller, phNode: Any, hOriginalNode: GraphNode, hClonedGraph: Graph) -> int:
        found = hClonedGraph.clone_of.get(hOriginalNode.id)
        if found is None or found.graph is not hClonedGraph:
            return INVALID_VALUE
        phNode.value = found
        return SUCCESS

    # instantiation and launches -----------------------------------------------------------------
    @staticmethod
    def _ordered(graph: Graph, strict: bool = True) -> list[GraphNode] | None:
        """The nodes in an order that honours every dependency (creation order where free);
        None for a cycle (or, not strict, the rest in creation order)."""
        placed: set[int] = set()
        order: list[GraphNode] = []
        progress = True
        while progress and len(order) < len(graph.nodes):
            progress = False
            for node in graph.nodes:
                if node.id not in placed and all(d.id in placed for d in node.dependencies):
                    placed.add(node.id)
                    order.append(node)
                    progress = True
        if len(order) < len(graph.nodes):
            if strict:
                return None
            order += [node for node in graph.nodes if node.id not in placed]
        return order

    def _instantiate(self, c: Caller, graph: Graph, flags: int) -> GraphExec | None:
        ordered = self._ordered(graph)
        if ordered is None:
            return None
        copies: dict[int, GraphNode] = {}
        nodes = [self._copy_node(node, None, copies, c.session.id, False) for node in ordered]
        exec_ = GraphExec(next(self._ids), c.session.id, nodes, graph.topology(), copies,
                          [copies[node.id] for node in graph.nodes], flags, next(self._graph_serials))
        self.graph_execs[exec_.id] = exec_
        return exec_

    def _instantiated(self, c: Caller, out: Any, graph: Graph, flags: int) -> int:
        known = (C["CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH"] | C["CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD"]
                 | C["CUDA_GRAPH_INSTANTIATE_FLAG_DEVICE_LAUNCH"] | C["CUDA_GRAPH_INSTANTIATE_FLAG_USE_NODE_PRIORITY"])
        if flags & ~known:
            return INVALID_VALUE
        exec_ = self._instantiate(c, graph, flags)
        if exec_ is None:
            return INVALID_VALUE  # a cycle
        out.value = exec_
        return SUCCESS

    def cuGraphInstantiateWithFlags(self, c: Caller, phGraphExec: Any, hGraph: Graph, flags: int) -> int:
        return self._instantiated(c, phGraphExec, hGraph, flags)

    def cuGraphInstantiate_v2(self, c: Caller, phGraphExec: Any, hGraph: Graph, phErrorNode: Any, logBuffer: Any,
                              bufferSize: int) -> int:
        """The CUDA 11 form: no flags, an error node and a log (empty: nothing failed)."""
        rc = self._instantiated(c, phGraphExec, hGraph, 0)
        if logBuffer is not None:
            logBuffer.value = b"" if rc == SUCCESS else b"the graph has a cycle"
        return rc

    cuGraphInstantiate = cuGraphInstantiate_v2

    def cuGraphInstantiateWithParams(self, c: Caller, phGraphExec: Any, hGraph: Graph, instantiateParams: Any) -> int:
        flags = instantiateParams.flags if instantiateParams is not None else 0
        rc = self._instantiated(c, phGraphExec, hGraph, flags)
        if instantiateParams is not None:
            cycle = rc != SUCCESS and self._ordered(hGraph) is None
            instantiateParams.result_out = C["CUDA_GRAPH_INSTANTIATE_SUCCESS"] if rc == SUCCESS else \
                C["CUDA_GRAPH_INSTANTIATE_INVALID_STRUCTURE"] if cycle else C["CUDA_GRAPH_INSTANTIATE_ERROR"]
        return rc

    def cuGraphExecGetFlags(self, c: Caller, hGraphExec: GraphExec, flags: Any) -> int:
        flags.value = hGraphExec.flags
        return SUCCESS

    def cuGraphExecDestroy(self, c: Caller, hGraphExec: GraphExec) -> int:
        del self.graph_execs[hGraphExec.id]
        return SUCCESS

    def cuGraphUpload(self, c: Caller, hGraphExec: GraphExec, hStream: Any) -> int:
        return SUCCESS

    def _run_nodes(self, c: Caller, stream: Any, nodes: list[GraphNode]) -> int:
        for node in nodes:
            if node.replay is not None and node.enabled:
                rc = node.replay(c, stream)
                if rc != SUCCESS:
                    return rc
        return SUCCESS

    def cuGraphLaunch(self, c: Caller, hGraphExec: GraphExec, hStream: Any) -> int:
        """Replay every node, in dependency order, on the stream (the shim launches through
        _graph_run_frame, which hands host nodes to it; here, a graph launch inside a capture)."""
        if self.capturing(hStream) is not None:
            if self._has_host_nodes(hGraphExec.nodes):
                return C["CUDA_ERROR_NOT_SUPPORTED"]  # its host functions would have no one to run them
            return self._capture_node(hStream, C["CU_GRAPH_NODE_TYPE_GRAPH"],
                                      lambda caller, stream: self.cuGraphLaunch(caller, hGraphExec, stream))
        if self._has_host_nodes(hGraphExec.nodes):
            return C["CUDA_ERROR_NOT_SUPPORTED"]
        refused = self._graph_memory_launchable(hGraphExec)
        if refused is not None:
            return refused
        return self._run_nodes(c, hStream, hGraphExec.nodes)

    def cuGraphNodeSetEnabled(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode, isEnabled: int) -> int:
        """Kernel, memset and memcpy nodes can be disabled (they then do nothing)."""
        node = hGraphExec.by_origin.get(hNode.id)
        if node is None or node.type not in ENABLEABLE:
            return INVALID_VALUE
        node.enabled = bool(isEnabled)
        return SUCCESS

    def cuGraphNodeGetEnabled(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode, isEnabled: Any) -> int:
        node = hGraphExec.by_origin.get(hNode.id)
        if node is None or node.type not in ENABLEABLE:
            return INVALID_VALUE
        isEnabled.value = int(node.enabled)
        return SUCCESS

    def _update(self, hGraphExec: GraphExec, hGraph: Graph) -> tuple[int, GraphNode | None]:
        """Same topology and the same kinds of work: the executable graph's nodes take the new
        parameters; otherwise the reason (CUgraphExecUpdateResult) and the node at fault."""
        topology = hGraph.topology()
        if len(topology) != len(hGraphExec.topology):
            return C["CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED"], None
        for node, new, old in zip(hGraph.nodes, topology, hGraphExec.topology):
            if new[2] != old[2]:
                return C["CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED"], node
        for node, new, old in zip(hGraph.nodes, topology, hGraphExec.topology):
            if new[0] != old[0]:
                return C["CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED"], node
            if new[1] != old[1]:
                return (C["CU_GRAPH_EXEC_UPDATE_ERROR_FUNCTION_CHANGED"] if new[0] == C["CU_GRAPH_NODE_TYPE_KERNEL"]
                        else C["CU_GRAPH_EXEC_UPDATE_ERROR_PARAMETERS_CHANGED"]), node
        for mine, theirs in zip(hGraphExec.positions, hGraph.nodes):
            self._take_params(mine, theirs)
        return C["CU_GRAPH_EXEC_UPDATE_SUCCESS"], None

    def cuGraphExecUpdate_v2(self, c: Caller, hGraphExec: GraphExec, hGraph: Graph, resultInfo: Any) -> int:
        result, node = self._update(hGraphExec, hGraph)
        if resultInfo is not None:
            resultInfo.result = result
            resultInfo.errorNode = self.handle_id(node) if node is not None else 0
            resultInfo.errorFromNode = 0
        return SUCCESS if result == C["CU_GRAPH_EXEC_UPDATE_SUCCESS"] else C["CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE"]

    def cuGraphExecUpdate(self, c: Caller, hGraphExec: GraphExec, hGraph: Graph, hErrorNode_out: Any,
                          updateResult_out: Any) -> int:
        result, node = self._update(hGraphExec, hGraph)
        hErrorNode_out.value = node
        updateResult_out.value = result
        return SUCCESS if result == C["CU_GRAPH_EXEC_UPDATE_SUCCESS"] else C["CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE"]

    # graph memory: allocation and free nodes -----------------------------------------------------
    def _has_graph_memory(self, graph: Graph) -> bool:
        return any(node.type in MEMORY_NODES or (node.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]
                                                 and self._has_graph_memory(node.params)) for node in graph.nodes)

    def _forget_graph_memory(self, session: Session) -> None:
        for key in [k for k, v in self.graph_allocations.items() if v.owner == session.id]:
            del self.graph_allocations[key]
        for key in [k for k in self.graph_memory_highs if k[0] == session.id]:
            del self.graph_memory_highs[key]
        for key in [k for k, run in self.graph_runs.items() if run[0].owner == session.id]:
            del self.graph_runs[key]

    def cuGraphAddMemAllocNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                               numDependencies: int, nodeParams: Any) -> int:
        """Pinned device memory of the given size on the given device; its address is fixed now
        (returned in nodeParams.dptr) and valid while the graph's launches hold it."""
        p = nodeParams
        props = p.poolProps
        if props.allocType != C["CU_MEM_ALLOCATION_TYPE_PINNED"] or props.location.type != \
                C["CU_MEM_LOCATION_TYPE_DEVICE"] or not p.bytesize:
            return INVALID_VALUE
        gpu = self._gpu(c, props.location.id)
        after = self._dependencies(hGraph, dependencies, numDependencies)
        if gpu is None or after is None:
            return INVALID_VALUE
        try:
            gpu.hold(c.session.id, gpu.memory.footprint(p.bytesize), cuda=True)
        except OutOfMemory:
            return C["CUDA_ERROR_OUT_OF_MEMORY"]
        p.dptr = gpu.memory.allocate(c.session.id, p.bytesize).address
        allocation = GraphAllocation(p.dptr, p.bytesize, gpu, c.session.id, _copy(p))
        self.graph_allocations[allocation.address] = allocation
        phGraphNode.value = self._add_node(hGraph, C["CU_GRAPH_NODE_TYPE_MEM_ALLOC"], after,
                                           self._replay_of(C["CU_GRAPH_NODE_TYPE_MEM_ALLOC"], allocation),
                                           ("alloc", p.bytesize), allocation)
        return SUCCESS

    def cuGraphAddMemFreeNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                              numDependencies: int, dptr: int) -> int:
        """Frees a graph allocation (made by an allocation node, of this graph or another)."""
        allocation = self.graph_allocations.get(dptr)
        if allocation is None or allocation.owner != c.session.id:
            return INVALID_VALUE
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies, C["CU_GRAPH_NODE_TYPE_MEM_FREE"],
                                allocation, ("free",))

    def cuGraphMemAllocNodeGetParams(self, c: Caller, hNode: GraphNode, params_out: Any) -> int:
        if hNode.type != C["CU_GRAPH_NODE_TYPE_MEM_ALLOC"]:
            return INVALID_VALUE
        ctypes.memmove(ctypes.addressof(params_out), ctypes.addressof(hNode.params.params), ctypes.sizeof(params_out))
        return SUCCESS

    def cuGraphMemFreeNodeGetParams(self, c: Caller, hNode: GraphNode, dptr_out: Any) -> int:
        if hNode.type != C["CU_GRAPH_NODE_TYPE_MEM_FREE"]:
            return INVALID_VALUE
        dptr_out.value = hNode.params.address
        return SUCCESS

    def _graph_memory_launchable(self, graph_exec: GraphExec) -> int | None:
        """An executable graph whose allocations of an earlier launch are still in use cannot be
        launched again, unless it was instantiated to free them on launch."""
        for allocation in self._allocations_of(graph_exec.nodes):
            if allocation.live:
                if not graph_exec.flags & C["CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH"]:
                    return INVALID_VALUE
                allocation.live = False
        return None

    def _allocations_of(self, nodes: list[GraphNode]) -> list[GraphAllocation]:
        found = []
        for node in nodes:
            if node.type == C["CU_GRAPH_NODE_TYPE_MEM_ALLOC"]:
                found.append(node.params)
            elif node.type == C["CU_GRAPH_NODE_TYPE_GRAPH"]:
                found += self._allocations_of(node.params.nodes)
        return found

    def _graph_allocation_made(self, c: Caller, stream: Any, allocation: GraphAllocation) -> int:
        allocation.live = True
        usage = self._graph_memory_usage(allocation.owner, allocation.gpu)
        usage[1] = max(usage[1], self._graph_memory_in_use(allocation.owner, allocation.gpu))
        usage[3] = max(usage[3], self._graph_memory_reserved(allocation.owner, allocation.gpu))
        return SUCCESS

    def _graph_allocation_freed(self, c: Caller, stream: Any, allocation: GraphAllocation) -> int:
        allocation.live = False
        return SUCCESS

    def _free_graph_allocation(self, c: Caller, dptr: int) -> int | None:
        """cuMemFree or cuMemFreeAsync of a graph allocation: it is no longer in use (its
        memory stays reserved for the graph); None for other memory."""
        allocation = self.graph_allocations.get(dptr)
        if allocation is None or allocation.owner != c.session.id:
            return None
        if not allocation.live:
            return INVALID_VALUE
        allocation.live = False
        return SUCCESS

    def _graph_memory_usage(self, owner: int, gpu: Any) -> list[int]:
        """[used, used high, reserved, reserved high] high-water marks kept per process and device."""
        return self.graph_memory_highs.setdefault((owner, gpu.index), [0, 0, 0, 0])

    def _graph_memory_in_use(self, owner: int, gpu: Any) -> int:
        return sum(a.size for a in self.graph_allocations.values() if a.owner == owner and a.gpu is gpu and a.live)

    def _graph_memory_reserved(self, owner: int, gpu: Any) -> int:
        return sum(gpu.memory.footprint(a.size) for a in self.graph_allocations.values()
                   if a.owner == owner and a.gpu is gpu)

    def cuDeviceGetGraphMemAttribute(self, c: Caller, device: int, attr: int, value: Any) -> int:
        gpu, rc = self._device_call(c, device)
        if gpu is None:
            return rc
        highs = self._graph_memory_usage(c.session.id, gpu)
        used, reserved = self._graph_memory_in_use(c.session.id, gpu), self._graph_memory_reserved(c.session.id, gpu)
        answers = {C["CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT"]: used,
                   C["CU_GRAPH_MEM_ATTR_USED_MEM_HIGH"]: max(highs[1], used),
                   C["CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT"]: reserved,
                   C["CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH"]: max(highs[3], reserved)}
        if attr not in answers:
            return INVALID_VALUE
        value.value = answers[attr]
        return SUCCESS

    def cuDeviceSetGraphMemAttribute(self, c: Caller, device: int, attr: int, value: Any) -> int:
        """Only the high-water marks can be set, and only to 0 (a reset)."""
        gpu, rc = self._device_call(c, device)
        if gpu is None:
            return rc
        if attr not in GRAPH_MEM_HIGH or value.value != 0:
            return INVALID_VALUE
        highs = self._graph_memory_usage(c.session.id, gpu)
        highs[1 if attr == C["CU_GRAPH_MEM_ATTR_USED_MEM_HIGH"] else 3] = 0
        return SUCCESS

    def cuDeviceGraphMemTrim(self, c: Caller, device: int) -> int:
        """Give back the memory of graph allocations not in use whose allocation nodes are gone
        (their graphs and executable graphs destroyed)."""
        gpu, rc = self._device_call(c, device)
        if gpu is None:
            return rc
        kept = set()
        for nodes in [g.nodes for g in self.graphs.values()] + [e.nodes for e in self.graph_execs.values()]:
            kept |= {id(a) for a in self._allocations_of(nodes)}
        for address, allocation in list(self.graph_allocations.items()):
            if allocation.owner == c.session.id and allocation.gpu is gpu and not allocation.live \
                    and id(allocation) not in kept:
                gpu.memory.free(c.session.id, address)
                gpu.release(c.session.id, gpu.memory.footprint(allocation.size))
                del self.graph_allocations[address]
        return SUCCESS

    # kernel nodes: parameters set and read through the launch frame (native/cuda/kernels.c) ------
    #: a launch record's head (cuda_modules.ModuleServing.LAUNCH): context, function, stream,
    #: grid, block, shared bytes, flags, parameter bytes
    HEAD = struct.Struct("<QQQ3I3IIII")

    def _graph_frame(self, session: Session, payload: bytes) -> bytes | Later:
        flags = self.HEAD.unpack_from(payload)[10]
        if flags & self.LAUNCH_CAPTURE_HOST:
            return self._capture_host_frame(session, payload)
        return self._graph_run_frame(session, payload) if flags & self.LAUNCH_GRAPH_RUN else \
            self._kernel_node_frame(session, payload)

    def _capture_host_frame(self, session: Session, payload: bytes) -> bytes:
        """cuLaunchHostFunc from the shim: a launch record whose flags hold LAUNCH_CAPTURE_HOST,
        then u64 function and u64 user data. On a capturing stream the function becomes a host
        node of the capture; reply i32 and u32 1 when it did (0: the shim runs it)."""
        context, stream_id = self.HEAD.unpack_from(payload)[0], self.HEAD.unpack_from(payload)[2]
        fn, data = struct.unpack_from("<QQ", payload, self.HEAD.size)
        stream = self.resolve("CUstream", stream_id, Caller(session, context))
        if stream is None:
            return struct.pack("<iI", C["CUDA_ERROR_INVALID_HANDLE"], 0)
        if self.capturing(stream) is None:
            return struct.pack("<iI", SUCCESS, 0)
        params = API.ctype_named("CUDA_HOST_NODE_PARAMS")(fn, data)
        return struct.pack("<iI", self._capture_node(stream, C["CU_GRAPH_NODE_TYPE_HOST"], None, ("host",), params), 1)

    def _graph_run_frame(self, session: Session, payload: bytes) -> bytes | Later:
        """cuGraphLaunch from the shim (native/cuda/graphs.c): a launch record whose flags hold
        LAUNCH_GRAPH_RUN, then u64 executable graph id and u64 resume token (0 for a new launch). The
        nodes run in dependency order up to a host node, which the shim's host-function worker
        runs and then resumes the launch with the token. Reply: i32, u64 host function, u64 its
        user data, u64 token (0: the launch is done)."""
        context, stream_id = self.HEAD.unpack_from(payload)[0], self.HEAD.unpack_from(payload)[2]
        exec_id, token = struct.unpack_from("<QQ", payload, self.HEAD.size)
        c = Caller(session, context)
        if token:
            run = self.graph_runs.pop(token, None)
            if run is None or run[0].owner != session.id:
                return struct.pack("<iQQQ", INVALID_VALUE, 0, 0, 0)
            graph_exec, stream, nodes = run
        else:
            graph_exec, stream = self.resolve("CUgraphExec", exec_id, c), self.resolve("CUstream", stream_id, c)
            if graph_exec is None or stream is None:
                return struct.pack("<iQQQ", C["CUDA_ERROR_INVALID_HANDLE"], 0, 0, 0)
            if self.capturing(stream) is not None:
                return struct.pack("<iQQQ", self.cuGraphLaunch(c, graph_exec, stream), 0, 0, 0)
            refused = self._graph_memory_launchable(graph_exec)
            if refused is not None:
                return struct.pack("<iQQQ", refused, 0, 0, 0)
            nodes = self._flatten(graph_exec.nodes)
        return self._graph_nodes(c, graph_exec, stream, nodes)

    def _graph_nodes(self, c: Caller, graph_exec: GraphExec, stream: Any, nodes: list[GraphNode]) -> bytes | Later:
        """Run a graph launch's nodes up to its next host node (see _graph_run_frame); a kernel
        that computes holds the rest until it has ended."""
        for index, node in enumerate(nodes):
            if node.type == C["CU_GRAPH_NODE_TYPE_HOST"]:
                token = next(self._ids)
                self.graph_runs[token] = (graph_exec, stream, nodes[index + 1:])
                return struct.pack("<iQQQ", SUCCESS, node.params.fn or 0, node.params.userData or 0, token)
            if node.replay is not None and node.enabled:
                rc = node.replay(c, stream)
                if rc != SUCCESS:
                    return struct.pack("<iQQQ", rc, 0, 0, 0)
                if c.session.computing:
                    rest = nodes[index + 1:]
                    return Later(lambda: self._graph_nodes(c, graph_exec, stream, rest))
        return struct.pack("<iQQQ", SUCCESS, 0, 0, 0)

    def _flatten(self, nodes: list[GraphNode]) -> list[GraphNode]:
        """Nodes in an order that honours dependencies, child graphs' nodes in their place."""
        flat: list[GraphNode] = []
        for node in nodes:
            flat += self._flatten(self._ordered(node.params) or []) if node.type == C["CU_GRAPH_NODE_TYPE_GRAPH"] \
                else [node]
        return flat

    def _has_host_nodes(self, nodes: list[GraphNode]) -> bool:
        return any(node.type == C["CU_GRAPH_NODE_TYPE_HOST"] for node in self._flatten(nodes))

    # host nodes ---------------------------------------------------------------------------------
    def cuGraphAddHostNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                           numDependencies: int, nodeParams: Any) -> int:
        """A host function the launching process's library runs in its place in the graph."""
        if nodeParams is None or not nodeParams.fn:
            return INVALID_VALUE
        return self._node_added(phGraphNode, hGraph, dependencies, numDependencies, C["CU_GRAPH_NODE_TYPE_HOST"],
                                _copy(nodeParams), ("host",))

    def cuGraphHostNodeGetParams(self, c: Caller, hNode: GraphNode, nodeParams: Any) -> int:
        return self._params_out(hNode, C["CU_GRAPH_NODE_TYPE_HOST"], nodeParams)

    def cuGraphHostNodeSetParams(self, c: Caller, hNode: GraphNode, nodeParams: Any) -> int:
        if nodeParams is None or not nodeParams.fn:
            return INVALID_VALUE
        return self._params_set(hNode, C["CU_GRAPH_NODE_TYPE_HOST"], _copy(nodeParams))

    def cuGraphExecHostNodeSetParams(self, c: Caller, hGraphExec: GraphExec, hNode: GraphNode, nodeParams: Any) -> int:
        if nodeParams is None or not nodeParams.fn:
            return INVALID_VALUE
        return self._params_set(hGraphExec.by_origin.get(hNode.id), C["CU_GRAPH_NODE_TYPE_HOST"], _copy(nodeParams))

    def _kernel_node_frame(self, session: Session, payload: bytes) -> bytes:
        """A launch record whose flags hold LAUNCH_NODE_SET or LAUNCH_NODE_GET, then u64 node id and u64
        executable graph id (0: the graph's own node), then (a set) the packed parameters.
        A set answers i32; a get answers i32, the node's launch head (function id, grid,
        block, shared bytes, parameter bytes) and its packed parameters."""
        (context, function_id, _, gx, gy, gz, bx, by, bz, shared, flags,
         args_size) = self.HEAD.unpack_from(payload)
        node_id, exec_id = struct.unpack_from("<QQ", payload, self.HEAD.size)
        c = Caller(session, context)
        node = self.resolve("CUgraphNode", node_id, c)
        graph_exec = self.resolve("CUgraphExec", exec_id, c) if exec_id else None
        if node is None or (exec_id and graph_exec is None):
            return struct.pack("<i", C["CUDA_ERROR_INVALID_HANDLE"])
        target = graph_exec.by_origin.get(node.id) if graph_exec is not None else node
        if target is None or target.type != C["CU_GRAPH_NODE_TYPE_KERNEL"]:
            return struct.pack("<i", INVALID_VALUE)
        if flags & self.LAUNCH_NODE_GET:
            if target.params is None:
                return struct.pack("<i", C["CUDA_ERROR_NOT_SUPPORTED"])
            ref, grid, block, shared, args, _ = target.params
            head = self.HEAD.pack(0, self.handle_id(ref), 0, *grid, *block, shared, 0, len(args))
            return struct.pack("<i", SUCCESS) + head + args
        ref = self._function_of(function_id, c)
        if ref is None:
            return struct.pack("<i", C["CUDA_ERROR_INVALID_HANDLE"])
        at = self.HEAD.size + 16
        kernel = (ref, (gx, gy, gz), (bx, by, bz), shared, bytes(payload[at:at + args_size]), 0)
        target.params, target.replay = kernel, self._replay_of(C["CU_GRAPH_NODE_TYPE_KERNEL"], kernel)
        target.signature = ("kernel", ref.module.id, ref.index)
        return struct.pack("<i", SUCCESS)

    # kernel node attributes ---------------------------------------------------------------------
    def cuGraphKernelNodeGetAttribute(self, c: Caller, hNode: GraphNode, attr: int, value_out: Any) -> int:
        if hNode.type != C["CU_GRAPH_NODE_TYPE_KERNEL"] or attr not in KERNEL_NODE_ATTRIBUTES:
            return INVALID_VALUE
        stored = hNode.attributes.get(attr, bytes(ctypes.sizeof(value_out)))
        ctypes.memmove(ctypes.addressof(value_out), stored, ctypes.sizeof(value_out))
        return SUCCESS

    def cuGraphKernelNodeSetAttribute(self, c: Caller, hNode: GraphNode, attr: int, value: Any) -> int:
        """Kept with the node (copied into clones and executable graphs); vgpud's kernels are
        recorded, not computed, so none of them changes what a launch does."""
        if hNode.type != C["CU_GRAPH_NODE_TYPE_KERNEL"] or attr not in KERNEL_NODE_ATTRIBUTES or value is None:
            return INVALID_VALUE
        window = attr == C["CU_LAUNCH_ATTRIBUTE_ACCESS_POLICY_WINDOW"]
        if window and not 0.0 <= value.accessPolicyWindow.hitRatio <= 1.0:
            return INVALID_VALUE
        hNode.attributes[attr] = bytes(value)
        return SUCCESS

    def cuGraphKernelNodeCopyAttributes(self, c: Caller, dst: GraphNode, src: GraphNode) -> int:
        if dst.type != C["CU_GRAPH_NODE_TYPE_KERNEL"] or src.type != C["CU_GRAPH_NODE_TYPE_KERNEL"]:
            return INVALID_VALUE
        dst.attributes = dict(src.attributes)
        return SUCCESS
