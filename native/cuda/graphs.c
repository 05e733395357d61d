/* CUDA graphs, the parts the library answers itself: the generic node functions
 * (cuGraphAddNode, cuGraphNodeGetParams, cuGraphNodeSetParams, cuGraphExecNodeSetParams), which
 * take a CUgraphNodeParams union and turn into the function of the node's kind that vgpud
 * serves; and graph memory attributes, whose values are all cuuint64_t and travel as such.
 * The graphs themselves live in vgpud (src/vgpu/server/cuda_graphs.py). */
#define _GNU_SOURCE
#define __CUDA_API_VERSION_INTERNAL
#include <cuda.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_shim.h"
#include "vgpu_wire.h"

extern const vgpu_function vgpu_cuda_fn_cuDeviceGetGraphMemAttribute, vgpu_cuda_fn_cuDeviceSetGraphMemAttribute;

static CUresult graph_mem_attribute(const vgpu_function *fn, CUdevice device, CUgraphMem_attribute attr,
                                    uint64_t *value) {
    void *const args[] = {(void *)&device, (void *)&attr, (void *)&value};
    return (CUresult)vgpu_cuda_dispatch(fn, args);
}

VGPU_EXPORT CUresult cuDeviceGetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr, void *value) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    uint64_t wide = 0;
    CUresult rc = graph_mem_attribute(&vgpu_cuda_fn_cuDeviceGetGraphMemAttribute, device, attr, &wide);
    if (rc == CUDA_SUCCESS) memcpy(value, &wide, sizeof wide);
    return rc;
}

VGPU_EXPORT CUresult cuDeviceSetGraphMemAttribute(CUdevice device, CUgraphMem_attribute attr, void *value) {
    if (!value) return CUDA_ERROR_INVALID_VALUE;
    uint64_t wide;
    memcpy(&wide, value, sizeof wide);
    return graph_mem_attribute(&vgpu_cuda_fn_cuDeviceSetGraphMemAttribute, device, attr, &wide);
}

/* ---- the generic node functions ---- */

static int all_zero(const void *bytes, size_t size) {
    const unsigned char *p = bytes;
    for (size_t i = 0; i < size; i++)
        if (p[i]) return 0;
    return 1;
}

static CUDA_MEMSET_NODE_PARAMS memset_v1(const CUDA_MEMSET_NODE_PARAMS_v2 *p) {
    CUDA_MEMSET_NODE_PARAMS v1 = {p->dst, p->pitch, p->value, p->elementSize, p->width, p->height};
    return v1;
}

static CUDA_KERNEL_NODE_PARAMS kernel_v2(const CUDA_KERNEL_NODE_PARAMS_v3 *p) {
    CUDA_KERNEL_NODE_PARAMS v2 = {p->func, p->gridDimX, p->gridDimY, p->gridDimZ, p->blockDimX, p->blockDimY,
                                  p->blockDimZ, p->sharedMemBytes, p->kernelParams, p->extra, p->kern, p->ctx};
    return v2;
}

/* A node of the kind nodeParams names, after no other node (dependencies are added after). */
static CUresult add_lone_node(CUgraphNode *node, CUgraph graph, CUgraphNodeParams *p) {
    switch (p->type) {
    case CU_GRAPH_NODE_TYPE_EMPTY:
        return cuGraphAddEmptyNode(node, graph, NULL, 0);
    case CU_GRAPH_NODE_TYPE_KERNEL: {
        CUDA_KERNEL_NODE_PARAMS kernel = kernel_v2(&p->kernel);
        return cuGraphAddKernelNode_v2(node, graph, NULL, 0, &kernel);
    }
    case CU_GRAPH_NODE_TYPE_MEMCPY:
        if (p->memcpy.flags || p->memcpy.reserved) return CUDA_ERROR_INVALID_VALUE;
        return cuGraphAddMemcpyNode(node, graph, NULL, 0, &p->memcpy.copyParams, p->memcpy.copyCtx);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS memset_params = memset_v1(&p->memset);
        return cuGraphAddMemsetNode(node, graph, NULL, 0, &memset_params, p->memset.ctx);
    }
    case CU_GRAPH_NODE_TYPE_GRAPH:
        if (p->graph.ownership != CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE) return CUDA_ERROR_NOT_SUPPORTED;
        return cuGraphAddChildGraphNode(node, graph, NULL, 0, p->graph.graph);
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
        return cuGraphAddEventRecordNode(node, graph, NULL, 0, p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
        return cuGraphAddEventWaitNode(node, graph, NULL, 0, p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC: {
        CUDA_MEM_ALLOC_NODE_PARAMS alloc = {p->alloc.poolProps, p->alloc.accessDescs, p->alloc.accessDescCount,
                                            p->alloc.bytesize, 0};
        CUresult rc = cuGraphAddMemAllocNode(node, graph, NULL, 0, &alloc);
        if (rc == CUDA_SUCCESS) p->alloc.dptr = alloc.dptr;
        return rc;
    }
    case CU_GRAPH_NODE_TYPE_MEM_FREE:
        return cuGraphAddMemFreeNode(node, graph, NULL, 0, p->free.dptr);
    case CU_GRAPH_NODE_TYPE_HOST: case CU_GRAPH_NODE_TYPE_EXT_SEMAS_SIGNAL: case CU_GRAPH_NODE_TYPE_EXT_SEMAS_WAIT:
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP: case CU_GRAPH_NODE_TYPE_CONDITIONAL: case CU_GRAPH_NODE_TYPE_MEMCPY_BATCH:
    case CU_GRAPH_NODE_TYPE_FABRIC_CPY_BATCH:
        return CUDA_ERROR_NOT_SUPPORTED; /* kinds vgpu does not serve */
    default:
        return CUDA_ERROR_INVALID_VALUE;
    }
}

static CUresult add_node(CUgraphNode *node, CUgraph graph, const CUgraphNode *dependencies,
                         const CUgraphEdgeData *edges, size_t count, CUgraphNodeParams *p) {
    if (!node || !p || (count && !dependencies)) return CUDA_ERROR_INVALID_VALUE;
    if (!all_zero(p->reserved0, sizeof p->reserved0) || p->reserved2) return CUDA_ERROR_INVALID_VALUE;
    CUgraphNode made = NULL;
    CUresult rc = add_lone_node(&made, graph, p);
    if (rc != CUDA_SUCCESS || !count) {
        if (rc == CUDA_SUCCESS) *node = made;
        return rc;
    }
    CUgraphNode *to = malloc(count * sizeof *to);
    if (!to) rc = CUDA_ERROR_OUT_OF_MEMORY;
    for (size_t i = 0; to && i < count; i++) to[i] = made;
    if (to) rc = cuGraphAddDependencies_v2(graph, dependencies, to, edges, count);
    free(to);
    if (rc != CUDA_SUCCESS) {
        cuGraphDestroyNode(made); /* nothing half made stays */
        return rc;
    }
    *node = made;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuGraphAddNode(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                    size_t numDependencies, CUgraphNodeParams *nodeParams) {
    return add_node(phGraphNode, hGraph, dependencies, NULL, numDependencies, nodeParams);
}
VGPU_EXPORT CUresult cuGraphAddNode_v2(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                       const CUgraphEdgeData *dependencyData, size_t numDependencies,
                                       CUgraphNodeParams *nodeParams) {
    return add_node(phGraphNode, hGraph, dependencies, dependencyData, numDependencies, nodeParams);
}
VGPU_EXPORT CUresult cuGraphAddNode_v3(CUgraphNode *phGraphNode, CUgraph hGraph, const CUgraphNode *dependencies,
                                       const CUgraphEdgeData *dependencyData, size_t numDependencies,
                                       CUgraphNodeParams *nodeParams) {
    return add_node(phGraphNode, hGraph, dependencies, dependencyData, numDependencies, nodeParams);
}

/* The node's kind, which nodeParams must name. */
static CUresult same_kind(CUgraphNode node, const CUgraphNodeParams *p) {
    if (!p) return CUDA_ERROR_INVALID_VALUE;
    CUgraphNodeType type;
    CUresult rc = cuGraphNodeGetType(node, &type);
    if (rc != CUDA_SUCCESS) return rc;
    return type == p->type ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

static CUresult set_params(CUgraphNode node, CUgraphNodeParams *p) {
    CUresult rc = same_kind(node, p);
    if (rc != CUDA_SUCCESS) return rc;
    switch (p->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL: {
        CUDA_KERNEL_NODE_PARAMS kernel = kernel_v2(&p->kernel);
        return cuGraphKernelNodeSetParams_v2(node, &kernel);
    }
    case CU_GRAPH_NODE_TYPE_MEMCPY:
        if (p->memcpy.flags || p->memcpy.reserved) return CUDA_ERROR_INVALID_VALUE;
        return cuGraphMemcpyNodeSetParams(node, &p->memcpy.copyParams);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS memset_params = memset_v1(&p->memset);
        return cuGraphMemsetNodeSetParams(node, &memset_params);
    }
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
        return cuGraphEventRecordNodeSetEvent(node, p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
        return cuGraphEventWaitNodeSetEvent(node, p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_EMPTY: case CU_GRAPH_NODE_TYPE_GRAPH: case CU_GRAPH_NODE_TYPE_MEM_ALLOC:
    case CU_GRAPH_NODE_TYPE_MEM_FREE:
        return CUDA_ERROR_INVALID_VALUE; /* nothing of these can change after creation */
    default:
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

VGPU_EXPORT CUresult cuGraphNodeSetParams(CUgraphNode hNode, CUgraphNodeParams *nodeParams) {
    return set_params(hNode, nodeParams);
}
VGPU_EXPORT CUresult cuGraphNodeSetParams_v2(CUgraphNode hNode, CUgraphNodeParams *nodeParams) {
    return set_params(hNode, nodeParams);
}

VGPU_EXPORT CUresult cuGraphExecNodeSetParams(CUgraphExec hGraphExec, CUgraphNode hNode,
                                              CUgraphNodeParams *nodeParams) {
    CUresult rc = same_kind(hNode, nodeParams);
    if (rc != CUDA_SUCCESS) return rc;
    CUgraphNodeParams *p = nodeParams;
    switch (p->type) {
    case CU_GRAPH_NODE_TYPE_KERNEL: {
        CUDA_KERNEL_NODE_PARAMS kernel = kernel_v2(&p->kernel);
        return cuGraphExecKernelNodeSetParams_v2(hGraphExec, hNode, &kernel);
    }
    case CU_GRAPH_NODE_TYPE_MEMCPY:
        if (p->memcpy.flags || p->memcpy.reserved) return CUDA_ERROR_INVALID_VALUE;
        return cuGraphExecMemcpyNodeSetParams(hGraphExec, hNode, &p->memcpy.copyParams, p->memcpy.copyCtx);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS memset_params = memset_v1(&p->memset);
        return cuGraphExecMemsetNodeSetParams(hGraphExec, hNode, &memset_params, p->memset.ctx);
    }
    case CU_GRAPH_NODE_TYPE_GRAPH:
        return cuGraphExecChildGraphNodeSetParams(hGraphExec, hNode, p->graph.graph);
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
        return cuGraphExecEventRecordNodeSetEvent(hGraphExec, hNode, p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
        return cuGraphExecEventWaitNodeSetEvent(hGraphExec, hNode, p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_EMPTY: case CU_GRAPH_NODE_TYPE_MEM_ALLOC: case CU_GRAPH_NODE_TYPE_MEM_FREE:
        return CUDA_ERROR_INVALID_VALUE;
    default:
        return CUDA_ERROR_NOT_SUPPORTED;
    }
}

VGPU_EXPORT CUresult cuGraphNodeGetParams(CUgraphNode hNode, CUgraphNodeParams *nodeParams) {
    if (!nodeParams) return CUDA_ERROR_INVALID_VALUE;
    CUgraphNodeType type;
    CUresult rc = cuGraphNodeGetType(hNode, &type);
    if (rc != CUDA_SUCCESS) return rc;
    CUgraphNodeParams *p = nodeParams;
    memset(p, 0, sizeof *p);
    p->type = type;
    switch (type) {
    case CU_GRAPH_NODE_TYPE_EMPTY:
        return CUDA_SUCCESS;
    case CU_GRAPH_NODE_TYPE_KERNEL: {
        CUDA_KERNEL_NODE_PARAMS k;
        rc = cuGraphKernelNodeGetParams_v2(hNode, &k);
        if (rc == CUDA_SUCCESS) {
            p->kernel.func = k.func, p->kernel.gridDimX = k.gridDimX, p->kernel.gridDimY = k.gridDimY;
            p->kernel.gridDimZ = k.gridDimZ, p->kernel.blockDimX = k.blockDimX, p->kernel.blockDimY = k.blockDimY;
            p->kernel.blockDimZ = k.blockDimZ, p->kernel.sharedMemBytes = k.sharedMemBytes;
            p->kernel.kernelParams = k.kernelParams;
        }
        return rc;
    }
    case CU_GRAPH_NODE_TYPE_MEMCPY:
        return cuGraphMemcpyNodeGetParams(hNode, &p->memcpy.copyParams);
    case CU_GRAPH_NODE_TYPE_MEMSET: {
        CUDA_MEMSET_NODE_PARAMS v1;
        rc = cuGraphMemsetNodeGetParams(hNode, &v1);
        if (rc == CUDA_SUCCESS) {
            p->memset.dst = v1.dst, p->memset.pitch = v1.pitch, p->memset.value = v1.value;
            p->memset.elementSize = v1.elementSize, p->memset.width = v1.width, p->memset.height = v1.height;
        }
        return rc;
    }
    case CU_GRAPH_NODE_TYPE_GRAPH:
        p->graph.ownership = CU_GRAPH_CHILD_GRAPH_OWNERSHIP_CLONE;
        return cuGraphChildGraphNodeGetGraph(hNode, &p->graph.graph);
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD:
        return cuGraphEventRecordNodeGetEvent(hNode, &p->eventRecord.event);
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT:
        return cuGraphEventWaitNodeGetEvent(hNode, &p->eventWait.event);
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC: {
        CUDA_MEM_ALLOC_NODE_PARAMS alloc;
        rc = cuGraphMemAllocNodeGetParams(hNode, &alloc);
        if (rc == CUDA_SUCCESS) {
            p->alloc.poolProps = alloc.poolProps, p->alloc.accessDescs = alloc.accessDescs;
            p->alloc.accessDescCount = alloc.accessDescCount, p->alloc.bytesize = alloc.bytesize;
            p->alloc.dptr = alloc.dptr;
        }
        return rc;
    }
    case CU_GRAPH_NODE_TYPE_MEM_FREE:
        return cuGraphMemFreeNodeGetParams(hNode, &p->free.dptr);
    default:
        return CUDA_ERROR_NOT_SUPPORTED; /* kinds vgpu does not serve */
    }
}

/* ---- launches: vgpud carries out the nodes in dependency order up to a host node; the
 * host-function worker runs it (after the work queued before it, as cuLaunchHostFunc's do)
 * and resumes the launch, running any further host nodes itself. Later work on the stream
 * waits for the worker, as it does behind a cuLaunchHostFunc. ---- */

#define GRAPH_RUN 0x10u

extern const unsigned vgpu_cuda_handle_CUgraphExec, vgpu_cuda_handle_CUstream;

typedef struct run_frame {
    uint64_t context, function, stream;
    uint32_t grid[3], block[3], shared, flags, args_size;
    uint64_t graph_exec, token;
} __attribute__((packed)) run_frame;

typedef struct graph_run {
    run_frame frame;
    void (*fn)(void *);
    void *data;
} graph_run;

/* Run (or resume, with a token) a launch; on a host node, the function, its data and the token. */
static CUresult run_nodes(graph_run *run) {
    const uint8_t *reply;
    size_t reply_len;
    if (vgpu_call(vgpu_cuda_api(), VGPU_OP_LAUNCH, &run->frame, sizeof run->frame, &reply, &reply_len, 0) != VGPU_OK ||
        reply_len < 28)
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    int32_t rc;
    uint64_t fn, data;
    memcpy(&rc, reply, 4);
    memcpy(&fn, reply + 4, 8);
    memcpy(&data, reply + 12, 8);
    memcpy(&run->frame.token, reply + 20, 8);
    run->fn = (void (*)(void *))(uintptr_t)fn;
    run->data = (void *)(uintptr_t)data;
    return (CUresult)rc;
}

static void run_host_nodes(void *arg) {
    graph_run *run = arg;
    while (run->frame.token) {
        run->fn(run->data);
        CUresult rc = run_nodes(run);
        if (rc != CUDA_SUCCESS) {
            vgpu_log(1, vgpu_cuda_api()->prefix, "cuGraphLaunch: the nodes after a host node failed (%d)", (int)rc);
            break;
        }
    }
    free(run);
}

VGPU_EXPORT CUresult cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream) {
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    graph_run *run = calloc(1, sizeof *run);
    if (!run) return CUDA_ERROR_OUT_OF_MEMORY;
    run->frame.context = vgpu_cuda_context_id();
    run->frame.flags = GRAPH_RUN;
    run->frame.args_size = 16;
    if (!hGraphExec || vgpu_handle_id(vgpu_cuda_handle_CUgraphExec, hGraphExec, &run->frame.graph_exec) < 0 ||
        ((uintptr_t)hStream >= 4096 && vgpu_handle_id(vgpu_cuda_handle_CUstream, hStream, &run->frame.stream) < 0)) {
        free(run);
        return CUDA_ERROR_INVALID_HANDLE;
    }
    if ((uintptr_t)hStream < 4096) run->frame.stream = (uintptr_t)hStream; /* NULL, legacy, per-thread */
    vgpu_cuda_host_calls_before(hStream);
    CUresult rc = run_nodes(run);
    if (rc != CUDA_SUCCESS || !run->frame.token) {
        free(run);
        return rc;
    }
    rc = vgpu_cuda_queue_host_call(hStream, run_host_nodes, run);
    if (rc != CUDA_SUCCESS) free(run);
    return rc;
}

/* ---- cuGraphDebugDotPrint: the graph as DOT, from what the query functions answer. Nodes are
 * named graph_<graph id>_node_<local id> (cuGraphGetId, cuGraphNodeGetLocalId); a child graph is
 * a cluster of its own. By default each node shows its kind and id, a kernel its name and a copy
 * its direction; flags add each kind's parameters and the handles. ---- */

#define DOT_FLAGS_KNOWN 0x3FFFFu

const char *vgpu_cuda_kernel_name(CUfunction f);

static const char *node_kind(CUgraphNodeType type) {
    switch (type) {
    case CU_GRAPH_NODE_TYPE_KERNEL: return "KERNEL";
    case CU_GRAPH_NODE_TYPE_MEMCPY: return "MEMCPY";
    case CU_GRAPH_NODE_TYPE_MEMSET: return "MEMSET";
    case CU_GRAPH_NODE_TYPE_HOST: return "HOST";
    case CU_GRAPH_NODE_TYPE_GRAPH: return "GRAPH";
    case CU_GRAPH_NODE_TYPE_EMPTY: return "EMPTY";
    case CU_GRAPH_NODE_TYPE_WAIT_EVENT: return "WAIT_EVENT";
    case CU_GRAPH_NODE_TYPE_EVENT_RECORD: return "EVENT_RECORD";
    case CU_GRAPH_NODE_TYPE_MEM_ALLOC: return "MEM_ALLOC";
    case CU_GRAPH_NODE_TYPE_MEM_FREE: return "MEM_FREE";
    case CU_GRAPH_NODE_TYPE_BATCH_MEM_OP: return "BATCH_MEM_OP";
    default: return "OTHER";
    }
}

static const char *copy_direction(const CUDA_MEMCPY3D *p) {
    int from_host = p->srcMemoryType == CU_MEMORYTYPE_HOST, to_host = p->dstMemoryType == CU_MEMORYTYPE_HOST;
    return from_host ? (to_host ? "HtoH" : "HtoD") : (to_host ? "DtoH" : "DtoD");
}

/* One node's label: kind and id, then what the flags ask for. */
static void node_label(FILE *f, CUgraphNode node, CUgraphNodeType type, unsigned id, unsigned flags) {
    unsigned verbose = flags & CU_GRAPH_DEBUG_DOT_FLAGS_VERBOSE;
    fprintf(f, "%s\\nid %u", node_kind(type), id);
    if (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_HANDLES) fprintf(f, "\\nhandle %p", (void *)node);
    if (type == CU_GRAPH_NODE_TYPE_KERNEL) {
        CUDA_KERNEL_NODE_PARAMS k;
        if (cuGraphKernelNodeGetParams_v2(node, &k) != CUDA_SUCCESS) return;
        const char *name = vgpu_cuda_kernel_name(k.func);
        fprintf(f, "\\n%s", name ? name : "(kernel)");
        if (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_KERNEL_NODE_PARAMS)
            fprintf(f, "\\ngrid (%u,%u,%u) block (%u,%u,%u)\\nshared %u bytes", k.gridDimX, k.gridDimY, k.gridDimZ,
                    k.blockDimX, k.blockDimY, k.blockDimZ, k.sharedMemBytes);
    } else if (type == CU_GRAPH_NODE_TYPE_MEMCPY) {
        CUDA_MEMCPY3D p;
        if (cuGraphMemcpyNodeGetParams(node, &p) != CUDA_SUCCESS) return;
        fprintf(f, "\\n%s", copy_direction(&p));
        if (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_MEMCPY_NODE_PARAMS)
            fprintf(f, "\\n%zu x %zu x %zu bytes", p.WidthInBytes, p.Height, p.Depth);
    } else if (type == CU_GRAPH_NODE_TYPE_MEMSET && (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_MEMSET_NODE_PARAMS)) {
        CUDA_MEMSET_NODE_PARAMS p;
        if (cuGraphMemsetNodeGetParams(node, &p) == CUDA_SUCCESS)
            fprintf(f, "\\ndst 0x%llx value 0x%x\\n%zu x %zu of %u bytes", (unsigned long long)p.dst, p.value, p.width,
                    p.height, p.elementSize);
    } else if (type == CU_GRAPH_NODE_TYPE_HOST && (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_HOST_NODE_PARAMS)) {
        CUDA_HOST_NODE_PARAMS p;
        if (cuGraphHostNodeGetParams(node, &p) == CUDA_SUCCESS)
            fprintf(f, "\\nfn %p data %p", (void *)(uintptr_t)p.fn, p.userData);
    } else if ((type == CU_GRAPH_NODE_TYPE_EVENT_RECORD || type == CU_GRAPH_NODE_TYPE_WAIT_EVENT) &&
               (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_EVENT_NODE_PARAMS)) {
        CUevent event;
        if ((type == CU_GRAPH_NODE_TYPE_EVENT_RECORD ? cuGraphEventRecordNodeGetEvent(node, &event)
                                                     : cuGraphEventWaitNodeGetEvent(node, &event)) == CUDA_SUCCESS)
            fprintf(f, "\\nevent %p", (void *)event);
    } else if (type == CU_GRAPH_NODE_TYPE_MEM_ALLOC && (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_MEM_ALLOC_NODE_PARAMS)) {
        CUDA_MEM_ALLOC_NODE_PARAMS p;
        if (cuGraphMemAllocNodeGetParams(node, &p) == CUDA_SUCCESS)
            fprintf(f, "\\ndptr 0x%llx\\n%zu bytes on device %d", (unsigned long long)p.dptr, p.bytesize,
                    p.poolProps.location.id);
    } else if (type == CU_GRAPH_NODE_TYPE_MEM_FREE && (verbose || flags & CU_GRAPH_DEBUG_DOT_FLAGS_MEM_FREE_NODE_PARAMS)) {
        CUdeviceptr dptr;
        if (cuGraphMemFreeNodeGetParams(node, &dptr) == CUDA_SUCCESS) fprintf(f, "\\ndptr 0x%llx", (unsigned long long)dptr);
    }
}

static CUresult node_name(CUgraphNode node, unsigned *graph_id, unsigned *local_id) {
    CUgraph graph;
    CUresult rc = cuGraphNodeGetContainingGraph(node, &graph);
    if (rc == CUDA_SUCCESS) rc = cuGraphGetId(graph, graph_id);
    if (rc == CUDA_SUCCESS) rc = cuGraphNodeGetLocalId(node, local_id);
    return rc;
}

static CUresult dot_graph(FILE *f, CUgraph graph, unsigned flags, int depth) {
    unsigned graph_id;
    size_t count = 0, edges = 0;
    CUresult rc = cuGraphGetId(graph, &graph_id);
    if (rc == CUDA_SUCCESS) rc = cuGraphGetNodes(graph, NULL, &count);
    if (rc == CUDA_SUCCESS) rc = cuGraphGetEdges_v2(graph, NULL, NULL, NULL, &edges);
    if (rc != CUDA_SUCCESS) return rc;
    CUgraphNode *nodes = calloc(count + 1, sizeof *nodes), *from = calloc(edges + 1, sizeof *from),
                *to = calloc(edges + 1, sizeof *to);
    CUgraphEdgeData *data = calloc(edges + 1, sizeof *data);
    if (!nodes || !from || !to || !data) rc = CUDA_ERROR_OUT_OF_MEMORY;
    if (rc == CUDA_SUCCESS) rc = cuGraphGetNodes(graph, nodes, &count);
    if (rc == CUDA_SUCCESS) rc = cuGraphGetEdges_v2(graph, from, to, data, &edges);
    fprintf(f, "%*ssubgraph cluster_%u {\n%*slabel=\"graph_%u\";\n", 2 * depth, "", graph_id, 2 * depth + 2, "", graph_id);
    for (size_t i = 0; rc == CUDA_SUCCESS && i < count; i++) {
        CUgraphNodeType type;
        unsigned local_id;
        rc = cuGraphNodeGetType(nodes[i], &type);
        if (rc == CUDA_SUCCESS) rc = cuGraphNodeGetLocalId(nodes[i], &local_id);
        if (rc != CUDA_SUCCESS) break;
        fprintf(f, "%*sgraph_%u_node_%u [shape=%s, label=\"", 2 * depth + 2, "", graph_id, local_id,
                type == CU_GRAPH_NODE_TYPE_GRAPH ? "folder" : "box");
        node_label(f, nodes[i], type, local_id, flags);
        fprintf(f, "\"];\n");
        CUgraph child;
        if (type == CU_GRAPH_NODE_TYPE_GRAPH && cuGraphChildGraphNodeGetGraph(nodes[i], &child) == CUDA_SUCCESS) {
            rc = dot_graph(f, child, flags, depth + 1);
            unsigned child_id;
            size_t child_count = 0;
            if (rc == CUDA_SUCCESS && cuGraphGetId(child, &child_id) == CUDA_SUCCESS &&
                cuGraphGetNodes(child, NULL, &child_count) == CUDA_SUCCESS && child_count)
                fprintf(f, "%*sgraph_%u_node_%u -> graph_%u_node_0 [style=dashed, lhead=cluster_%u];\n", 2 * depth + 2,
                        "", graph_id, local_id, child_id, child_id);
        }
    }
    for (size_t i = 0; rc == CUDA_SUCCESS && i < edges; i++) {
        unsigned from_graph, from_id, to_graph, to_id;
        rc = node_name(from[i], &from_graph, &from_id);
        if (rc == CUDA_SUCCESS) rc = node_name(to[i], &to_graph, &to_id);
        if (rc == CUDA_SUCCESS)
            fprintf(f, "%*sgraph_%u_node_%u -> graph_%u_node_%u;\n", 2 * depth + 2, "", from_graph, from_id, to_graph,
                    to_id);
    }
    fprintf(f, "%*s}\n", 2 * depth, "");
    free(nodes), free(from), free(to), free(data);
    return rc;
}

VGPU_EXPORT CUresult cuGraphDebugDotPrint(CUgraph hGraph, const char *path, unsigned int flags) {
    if (!path || flags & ~DOT_FLAGS_KNOWN) return CUDA_ERROR_INVALID_VALUE;
    size_t count;
    CUresult rc = cuGraphGetNodes(hGraph, NULL, &count); /* the graph exists before the file is made */
    if (rc != CUDA_SUCCESS) return rc;
    FILE *f = fopen(path, "w");
    if (!f) return CUDA_ERROR_OPERATING_SYSTEM;
    fprintf(f, "digraph dot {\n  compound=true;\n");
    rc = dot_graph(f, hGraph, flags, 1);
    fprintf(f, "}\n");
    if (fclose(f) != 0 && rc == CUDA_SUCCESS) rc = CUDA_ERROR_OPERATING_SYSTEM;
    return rc;
}

/* ---- user objects: the process's own, as in the driver. References are held by the caller and
 * by graphs and executable graphs (a clone or an instantiation takes the graph's references
 * again); when the last goes, the destructor runs on the host-function worker, after the work
 * queued before. ---- */

typedef struct user_object {
    void *ptr;
    CUhostFn destroy;
    unsigned refs;
    struct user_object *next;
} user_object;

typedef struct graph_reference {
    void *holder; /* a CUgraph or a CUgraphExec */
    user_object *object;
    unsigned count;
    struct graph_reference *next;
} graph_reference;

static user_object *user_objects;
static graph_reference *graph_references;
static pthread_mutex_t user_objects_lock = PTHREAD_MUTEX_INITIALIZER;

static user_object *find_object(CUuserObject handle) { /* user_objects_lock held */
    for (user_object *o = user_objects; o; o = o->next)
        if (o == (user_object *)handle) return o;
    return NULL;
}

/* Drop references (user_objects_lock held); an object left with none is unlinked and returned. */
static user_object *drop(user_object *o, unsigned count) {
    o->refs -= count;
    if (o->refs) return NULL;
    for (user_object **at = &user_objects; *at; at = &(*at)->next)
        if (*at == o) {
            *at = o->next;
            break;
        }
    return o;
}

static void destroy_objects(user_object *dead) {
    while (dead) {
        user_object *next = dead->next;
        if (vgpu_cuda_queue_host_call(NULL, dead->destroy, dead->ptr) != CUDA_SUCCESS) dead->destroy(dead->ptr);
        free(dead);
        dead = next;
    }
}

VGPU_EXPORT CUresult cuUserObjectCreate(CUuserObject *object_out, void *ptr, CUhostFn destroy,
                                        unsigned int initialRefcount, unsigned int flags) {
    if (!object_out || !destroy || !initialRefcount || flags != CU_USER_OBJECT_NO_DESTRUCTOR_SYNC)
        return CUDA_ERROR_INVALID_VALUE;
    if (!vgpu_cuda_initialized()) return CUDA_ERROR_NOT_INITIALIZED;
    user_object *o = calloc(1, sizeof *o);
    if (!o) return CUDA_ERROR_OUT_OF_MEMORY;
    pthread_mutex_lock(&user_objects_lock);
    *o = (user_object){ptr, destroy, initialRefcount, user_objects};
    user_objects = o;
    pthread_mutex_unlock(&user_objects_lock);
    *object_out = (CUuserObject)o;
    return CUDA_SUCCESS;
}

VGPU_EXPORT CUresult cuUserObjectRetain(CUuserObject object, unsigned int count) {
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&user_objects_lock);
    user_object *o = find_object(object);
    if (o) o->refs += count;
    pthread_mutex_unlock(&user_objects_lock);
    return o ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

VGPU_EXPORT CUresult cuUserObjectRelease(CUuserObject object, unsigned int count) {
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&user_objects_lock);
    user_object *o = find_object(object), *dead = NULL;
    CUresult rc = !o || count > o->refs ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS && (dead = drop(o, count))) dead->next = NULL;
    pthread_mutex_unlock(&user_objects_lock);
    destroy_objects(dead);
    return rc;
}

static graph_reference *reference_of(void *holder, user_object *o) { /* user_objects_lock held */
    for (graph_reference *r = graph_references; r; r = r->next)
        if (r->holder == holder && r->object == o) return r;
    return NULL;
}

/* Give a holder references (user_objects_lock held). */
static int hold(void *holder, user_object *o, unsigned count) {
    graph_reference *r = reference_of(holder, o);
    if (!r) {
        if (!(r = calloc(1, sizeof *r))) return -1;
        *r = (graph_reference){holder, o, 0, graph_references};
        graph_references = r;
    }
    r->count += count;
    return 0;
}

VGPU_EXPORT CUresult cuGraphRetainUserObject(CUgraph graph, CUuserObject object, unsigned int count,
                                             unsigned int flags) {
    unsigned id;
    if (!count || flags & ~(unsigned)CU_GRAPH_USER_OBJECT_MOVE) return CUDA_ERROR_INVALID_VALUE;
    CUresult rc = cuGraphGetId(graph, &id);
    if (rc != CUDA_SUCCESS) return rc;
    pthread_mutex_lock(&user_objects_lock);
    user_object *o = find_object(object);
    if (!o || (flags & CU_GRAPH_USER_OBJECT_MOVE && count > o->refs)) rc = CUDA_ERROR_INVALID_VALUE;
    else if (hold(graph, o, count) < 0) rc = CUDA_ERROR_OUT_OF_MEMORY;
    else if (!(flags & CU_GRAPH_USER_OBJECT_MOVE)) o->refs += count; /* with MOVE the caller's become the graph's */
    pthread_mutex_unlock(&user_objects_lock);
    return rc;
}

VGPU_EXPORT CUresult cuGraphReleaseUserObject(CUgraph graph, CUuserObject object, unsigned int count) {
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    pthread_mutex_lock(&user_objects_lock);
    user_object *o = find_object(object), *dead = NULL;
    graph_reference *r = o ? reference_of(graph, o) : NULL;
    CUresult rc = !r || count > r->count ? CUDA_ERROR_INVALID_VALUE : CUDA_SUCCESS;
    if (rc == CUDA_SUCCESS) {
        r->count -= count;
        if ((dead = drop(o, count))) dead->next = NULL;
    }
    pthread_mutex_unlock(&user_objects_lock);
    destroy_objects(dead);
    return rc;
}

/* A graph or executable graph is gone: its references with it. */
static void release_holder(void *holder) {
    user_object *dead = NULL;
    pthread_mutex_lock(&user_objects_lock);
    for (graph_reference **at = &graph_references; *at;) {
        graph_reference *r = *at;
        if (r->holder != holder) {
            at = &r->next;
            continue;
        }
        *at = r->next;
        user_object *gone = r->count ? drop(r->object, r->count) : NULL;
        if (gone) {
            gone->next = dead;
            dead = gone;
        }
        free(r);
    }
    pthread_mutex_unlock(&user_objects_lock);
    destroy_objects(dead);
}

/* A clone or an instantiation: the new holder takes the source's references again. */
static void copy_references(void *from, void *to) {
    pthread_mutex_lock(&user_objects_lock);
    for (graph_reference *r = graph_references; r; r = r->next)
        if (r->holder == from && r->count && hold(to, r->object, r->count) == 0) r->object->refs += r->count;
    pthread_mutex_unlock(&user_objects_lock);
}

extern const vgpu_function vgpu_cuda_fn_cuGraphDestroy, vgpu_cuda_fn_cuGraphExecDestroy, vgpu_cuda_fn_cuGraphClone,
    vgpu_cuda_fn_cuGraphInstantiateWithFlags, vgpu_cuda_fn_cuGraphInstantiateWithParams,
    vgpu_cuda_fn_cuGraphInstantiate_v2;

VGPU_EXPORT CUresult cuGraphDestroy(CUgraph hGraph) {
    void *const args[] = {(void *)&hGraph};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuGraphDestroy, args);
    if (rc == CUDA_SUCCESS) release_holder(hGraph);
    return rc;
}

VGPU_EXPORT CUresult cuGraphExecDestroy(CUgraphExec hGraphExec) {
    void *const args[] = {(void *)&hGraphExec};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuGraphExecDestroy, args);
    if (rc == CUDA_SUCCESS) release_holder(hGraphExec);
    return rc;
}

VGPU_EXPORT CUresult cuGraphClone(CUgraph *phGraphClone, CUgraph originalGraph) {
    void *const args[] = {(void *)&phGraphClone, (void *)&originalGraph};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuGraphClone, args);
    if (rc == CUDA_SUCCESS) copy_references(originalGraph, *phGraphClone);
    return rc;
}

VGPU_EXPORT CUresult cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags) {
    void *const args[] = {(void *)&phGraphExec, (void *)&hGraph, (void *)&flags};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuGraphInstantiateWithFlags, args);
    if (rc == CUDA_SUCCESS) copy_references(hGraph, *phGraphExec);
    return rc;
}

VGPU_EXPORT CUresult cuGraphInstantiateWithParams(CUgraphExec *phGraphExec, CUgraph hGraph,
                                                  CUDA_GRAPH_INSTANTIATE_PARAMS *instantiateParams) {
    void *const args[] = {(void *)&phGraphExec, (void *)&hGraph, (void *)&instantiateParams};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuGraphInstantiateWithParams, args);
    if (rc == CUDA_SUCCESS) copy_references(hGraph, *phGraphExec);
    return rc;
}

VGPU_EXPORT CUresult cuGraphInstantiate_v2(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                                           char *logBuffer, size_t bufferSize) {
    void *const args[] = {(void *)&phGraphExec, (void *)&hGraph, (void *)&phErrorNode, (void *)&logBuffer,
                          (void *)&bufferSize};
    CUresult rc = (CUresult)vgpu_cuda_dispatch(&vgpu_cuda_fn_cuGraphInstantiate_v2, args);
    if (rc == CUDA_SUCCESS) copy_references(hGraph, *phGraphExec);
    return rc;
}

VGPU_EXPORT CUresult cuGraphInstantiate(CUgraphExec *phGraphExec, CUgraph hGraph, CUgraphNode *phErrorNode,
                                        char *logBuffer, size_t bufferSize) {
    return cuGraphInstantiate_v2(phGraphExec, hGraph, phErrorNode, logBuffer, bufferSize);
}

/* cuLaunchHostFunc on a capturing stream: the function becomes a host node of the capture.
 * CUDA_SUCCESS when captured, CUDA_ERROR_NOT_FOUND when the stream does not capture (the
 * caller then queues it as usual), or the capture's refusal. */
#define CAPTURE_HOST 0x20u

CUresult vgpu_cuda_capture_host_call(CUstream stream, void (*fn)(void *), void *data) {
    if ((uintptr_t)stream < 4096) return CUDA_ERROR_NOT_FOUND; /* default streams cannot capture */
    struct {
        uint64_t context, function, stream;
        uint32_t grid[3], block[3], shared, flags, args_size;
        uint64_t fn, data;
    } __attribute__((packed)) frame = {vgpu_cuda_context_id(), 0, 0, {0, 0, 0}, {0, 0, 0}, 0, CAPTURE_HOST, 16,
                                       (uintptr_t)fn, (uintptr_t)data};
    if (vgpu_handle_id(vgpu_cuda_handle_CUstream, stream, &frame.stream) < 0) return CUDA_ERROR_INVALID_HANDLE;
    const uint8_t *reply;
    size_t reply_len;
    if (vgpu_call(vgpu_cuda_api(), VGPU_OP_LAUNCH, &frame, sizeof frame, &reply, &reply_len, 0) != VGPU_OK ||
        reply_len < 8)
        return CUDA_ERROR_DEVICE_UNAVAILABLE;
    int32_t rc;
    uint32_t captured;
    memcpy(&rc, reply, 4);
    memcpy(&captured, reply + 4, 4);
    return rc != CUDA_SUCCESS || captured ? (CUresult)rc : CUDA_ERROR_NOT_FOUND;
}
