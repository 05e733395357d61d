"""Stream capture and CUDA graphs on the simulated GPU: work queued on a capturing stream
becomes graph nodes instead of running; an instantiated graph replays its nodes on a stream
(kernels recorded as graph launches, memsets and device copies done again, exactly).
Answers and error codes follow what a real H200 gave (tests/data/h200_driver_facts.txt).

A mixin of CudaService: ``_capture_node`` is how the service's launches, copies, memsets and
event records land in a capture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from vgpu.api.manifest import load
from vgpu.server.dispatch import Caller
from vgpu.server.state import Session

C = load("cuda").constants
SUCCESS = C["CUDA_SUCCESS"]
INVALID_VALUE = C["CUDA_ERROR_INVALID_VALUE"]
CAPTURE_UNSUPPORTED = C["CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"]
STATUS_NONE = C["CU_STREAM_CAPTURE_STATUS_NONE"]
STATUS_ACTIVE = C["CU_STREAM_CAPTURE_STATUS_ACTIVE"]
STATUS_INVALIDATED = C["CU_STREAM_CAPTURE_STATUS_INVALIDATED"]

#: replays a node on a stream of the launching process; returns a CUresult
Replay = Callable[[Caller, Any], int]


@dataclass
class GraphNode:
    id: int
    type: int                     # CUgraphNodeType
    dependencies: list["GraphNode"]
    replay: Replay | None = None  # None: an empty node
    #: what identifies the node's work for cuGraphExecUpdate (its kind and function)
    signature: tuple = ()


@dataclass
class Graph:
    id: int
    owner: int
    nodes: list[GraphNode] = field(default_factory=list)

    def topology(self) -> list[tuple]:
        index = {node.id: i for i, node in enumerate(self.nodes)}
        return [(n.type, n.signature, tuple(sorted(index[d.id] for d in n.dependencies))) for n in self.nodes]


@dataclass
class GraphExec:
    id: int
    owner: int
    nodes: list[GraphNode]
    topology: list[tuple]


@dataclass
class Capture:
    """A stream capture in progress: the graph it builds and the nodes later work follows."""

    id: int
    graph: Graph
    mode: int
    origin: Any                   # the stream that began it
    last: list[GraphNode] = field(default_factory=list)
    invalidated: bool = False


class Graphs:
    """cuStreamBeginCapture, cuStreamEndCapture, cuGraph* (mixed into CudaService)."""

    def _init_graphs(self) -> None:
        self.graphs: dict[int, Graph] = {}
        self.graph_execs: dict[int, GraphExec] = {}
        self.graph_nodes: dict[int, GraphNode] = {}
        #: stream id -> its capture (joined streams share their origin's)
        self.captures: dict[int, Capture] = {}

    def _forget_graphs(self, session: Session) -> None:
        for table in (self.graphs, self.graph_execs):
            for key in [k for k, v in table.items() if v.owner == session.id]:
                del table[key]
        live = {node.id for graph in self.graphs.values() for node in graph.nodes}
        live |= {node.id for graph in self.graph_execs.values() for node in graph.nodes}
        for key in [k for k in self.graph_nodes if k not in live]:
            del self.graph_nodes[key]
        for key in [k for k, capture in self.captures.items() if capture.graph.owner == session.id]:
            del self.captures[key]

    # capture -----------------------------------------------------------------------------
    def capturing(self, stream: Any) -> Capture | None:
        return self.captures.get(stream.id) if stream is not None and stream.id else None

    def _add_node(self, graph: Graph, node_type: int, dependencies: list[GraphNode], replay: Replay | None,
                  signature: tuple = ()) -> GraphNode:
        node = GraphNode(next(self._ids), node_type, list(dependencies), replay, signature)
        graph.nodes.append(node)
        self.graph_nodes[node.id] = node
        return node

    def _capture_node(self, stream: Any, node_type: int, replay: Replay | None, signature: tuple = ()) -> int:
        """Work queued on a capturing stream: a node after the capture's last ones."""
        capture = self.capturing(stream)
        if capture.invalidated:
            return C["CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"]
        node = self._add_node(capture.graph, node_type, capture.last, replay, signature)
        capture.last = [node]
        return SUCCESS

    def _invalidate(self, capture: Capture) -> int:
        """A synchronising call met a capture: the capture is spoiled, the call refused."""
        capture.invalidated = True
        return CAPTURE_UNSUPPORTED

    def _session_capture(self, c: Caller) -> Capture | None:
        return next((capture for capture in self.captures.values() if capture.graph.owner == c.session.id
                     and capture.mode == C["CU_STREAM_CAPTURE_MODE_GLOBAL"]), None)

    def cuStreamBeginCapture_v2(self, c: Caller, hStream: Any, mode: int) -> int:
        if hStream.id == 0:
            return CAPTURE_UNSUPPORTED  # the default (legacy) stream cannot be captured
        if mode not in (C["CU_STREAM_CAPTURE_MODE_GLOBAL"], C["CU_STREAM_CAPTURE_MODE_THREAD_LOCAL"],
                        C["CU_STREAM_CAPTURE_MODE_RELAXED"]):
            return INVALID_VALUE
        if self.capturing(hStream) is not None:
            return C["CUDA_ERROR_ILLEGAL_STATE"]
        graph = Graph(next(self._ids), c.session.id)
        self.graphs[graph.id] = graph
        self.captures[hStream.id] = Capture(graph.id, graph, mode, hStream)
        self._forget_launch_shapes()  # launches on the stream are captured now
        return SUCCESS

    cuStreamBeginCapture = cuStreamBeginCapture_v2

    def cuStreamEndCapture(self, c: Caller, hStream: Any, phGraph: Any) -> int:
        capture = self.capturing(hStream)
        if capture is None or capture.origin is not hStream:
            return C["CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"] if capture else C["CUDA_ERROR_ILLEGAL_STATE"]
        for key in [k for k, v in self.captures.items() if v is capture]:
            del self.captures[key]
        if capture.invalidated:
            del self.graphs[capture.graph.id]
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
        graph = Graph(next(self._ids), c.session.id)
        self.graphs[graph.id] = graph
        phGraph.value = graph
        return SUCCESS

    def cuGraphDestroy(self, c: Caller, hGraph: Graph) -> int:
        del self.graphs[hGraph.id]
        for node in hGraph.nodes:
            if not any(node in e.nodes for e in self.graph_execs.values()):
                self.graph_nodes.pop(node.id, None)
        return SUCCESS

    def _dependencies(self, graph: Graph, dependencies: list[GraphNode] | None, count: int) -> list[GraphNode] | None:
        found = dependencies or []
        if len(found) != count or any(node not in graph.nodes for node in found):
            return None
        return found

    def cuGraphAddEmptyNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                            numDependencies: int) -> int:
        after = self._dependencies(hGraph, dependencies, numDependencies)
        if after is None:
            return INVALID_VALUE
        phGraphNode.value = self._add_node(hGraph, C["CU_GRAPH_NODE_TYPE_EMPTY"], after, None, ("empty",))
        return SUCCESS

    def cuGraphAddMemsetNode(self, c: Caller, phGraphNode: Any, hGraph: Graph, dependencies: Any,
                             numDependencies: int, memsetParams: Any, ctx: int) -> int:
        after = self._dependencies(hGraph, dependencies, numDependencies)
        p = memsetParams
        if after is None or p is None or p.elementSize not in (1, 2, 4) or not p.width or not p.height:
            return INVALID_VALUE
        pattern = (p.value & ((1 << (8 * p.elementSize)) - 1)).to_bytes(p.elementSize, "little")
        rows = [(p.dst + row * p.pitch, p.width) for row in range(p.height)]

        def replay(caller: Caller, stream: Any) -> int:
            for address, width in rows:
                rc = self._memset(caller, stream, address, pattern, width)
                if rc != SUCCESS:
                    return rc
            return SUCCESS

        phGraphNode.value = self._add_node(hGraph, C["CU_GRAPH_NODE_TYPE_MEMSET"], after, replay,
                                           ("memset", p.elementSize))
        return SUCCESS

    def cuGraphAddDependencies_v2(self, c: Caller, hGraph: Graph, from_: Any, to: Any, edgeData: Any,
                                  numDependencies: int) -> int:
        if from_ is None or to is None or len(from_) != numDependencies or len(to) != numDependencies:
            return INVALID_VALUE
        for before, after in zip(from_, to):
            if before not in hGraph.nodes or after not in hGraph.nodes:
                return INVALID_VALUE
            after.dependencies.append(before)
        hGraph.nodes.sort(key=lambda node: self._depth(node))
        return SUCCESS

    def _depth(self, node: GraphNode) -> int:
        return 1 + max((self._depth(d) for d in node.dependencies), default=0)

    def cuGraphGetNodes(self, c: Caller, hGraph: Graph, nodes: Any, numNodes: Any) -> int:
        """Without ``nodes`` the count; with it, up to numNodes nodes and how many were given."""
        if nodes is not None:
            nodes.value = hGraph.nodes[:nodes.capacity]
            numNodes.value = len(nodes.value)
        else:
            numNodes.value = len(hGraph.nodes)
        return SUCCESS

    def cuGraphNodeGetType(self, c: Caller, hNode: GraphNode, type: Any) -> int:
        type.value = hNode.type
        return SUCCESS

    def _instantiate(self, c: Caller, graph: Graph) -> GraphExec:
        exec_ = GraphExec(next(self._ids), c.session.id, list(graph.nodes), graph.topology())
        self.graph_execs[exec_.id] = exec_
        return exec_

    def cuGraphInstantiateWithFlags(self, c: Caller, phGraphExec: Any, hGraph: Graph, flags: int) -> int:
        phGraphExec.value = self._instantiate(c, hGraph)
        return SUCCESS

    def cuGraphInstantiateWithParams(self, c: Caller, phGraphExec: Any, hGraph: Graph, instantiateParams: Any) -> int:
        phGraphExec.value = self._instantiate(c, hGraph)
        if instantiateParams is not None:
            instantiateParams.result_out = C["CUDA_GRAPH_INSTANTIATE_SUCCESS"]
        return SUCCESS

    def cuGraphExecDestroy(self, c: Caller, hGraphExec: GraphExec) -> int:
        del self.graph_execs[hGraphExec.id]
        return SUCCESS

    def cuGraphUpload(self, c: Caller, hGraphExec: GraphExec, hStream: Any) -> int:
        return SUCCESS

    def cuGraphLaunch(self, c: Caller, hGraphExec: GraphExec, hStream: Any) -> int:
        """Replay every node, in dependency order, on the stream."""
        if self.capturing(hStream) is not None:
            return self._capture_node(hStream, C["CU_GRAPH_NODE_TYPE_GRAPH"],
                                      lambda caller, stream: self.cuGraphLaunch(caller, hGraphExec, stream))
        for node in hGraphExec.nodes:
            if node.replay is not None:
                rc = node.replay(c, hStream)
                if rc != SUCCESS:
                    return rc
        return SUCCESS

    def cuGraphExecUpdate_v2(self, c: Caller, hGraphExec: GraphExec, hGraph: Graph, resultInfo: Any) -> int:
        """Same topology and the same kinds of work: the executable graph takes the new
        parameters; otherwise CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE, topology changed."""
        topology = hGraph.topology()
        if topology != hGraphExec.topology:
            changed = len(topology) != len(hGraphExec.topology) or any(
                a[2] != b[2] for a, b in zip(topology, hGraphExec.topology))
            if resultInfo is not None:
                resultInfo.result = C["CU_GRAPH_EXEC_UPDATE_ERROR_TOPOLOGY_CHANGED"] if changed else \
                    C["CU_GRAPH_EXEC_UPDATE_ERROR_NODE_TYPE_CHANGED"]
            return C["CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE"]
        hGraphExec.nodes = list(hGraph.nodes)
        if resultInfo is not None:
            resultInfo.result = C["CU_GRAPH_EXEC_UPDATE_SUCCESS"]
        return SUCCESS
