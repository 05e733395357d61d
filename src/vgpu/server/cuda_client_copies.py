"""Host-device copies the client makes itself (mixed into CudaService).

Each allocation's bytes are a memfd of vgpud's.  A local client maps the memfd of an
allocation it copies to or from (``OP_MAP_MEMORY`` names it; the client opens it through
/proc), and then a synchronous copy (or an asynchronous one with pageable host memory, which
is done with its buffer when it returns) is one memcpy in the client: vgpud receives the call as
usual, with the array marked as copied by the client (a ``ClientCopy``), orders and times
it as any copy, and answers once the work before it is done; the client copies after the
answer.  vgpud refuses (``CLIENT_COPY_REFUSED``) where it cannot vouch for the copy: the
allocation is not the one the client mapped (freed, its address reused), or the copy must
wait behind a stream memory wait.  The client then sends the data as before.
"""

from __future__ import annotations

import errno
import os
from typing import Any

from vgpu.server.dispatch import Caller
from vgpu.server.state import Session
from vgpu.wire import protocol
from vgpu.wire.codec import ClientCopy


class ClientCopies:
    """OP_MAP_MEMORY and the copies that follow from it."""

    def _init_client_copies(self) -> None:
        self.private_ops[protocol.OP_MAP_MEMORY] = self.map_memory

    def map_memory(self, session: Session, payload: bytes) -> bytes:
        """Where the client finds the memfd holding a device address: its descriptor number in
        vgpud, inode, first byte's device address, size and serial; or an errno."""
        (address,) = protocol.MAP_MEMORY_REQUEST.unpack(payload)
        if session.peer:  # memory on another host cannot be mapped
            return protocol.MAP_MEMORY_REPLY.pack(errno.EOPNOTSUPP, -1, 0, 0, 0, 0)
        gpu = self._gpu_of_address(address)
        found = gpu.memory.client_store(session.id, address) if gpu is not None else None
        if found is None or found[0].fd < 0:
            return protocol.MAP_MEMORY_REPLY.pack(errno.EFAULT, -1, 0, 0, 0, 0)
        store, start = found
        store.client_mapped = True
        return protocol.MAP_MEMORY_REPLY.pack(0, store.fd, os.fstat(store.fd).st_ino, start, store.size, store.serial)

    def _client_copy(self, c: Caller, stream: Any, address: int, copy: ClientCopy) -> int:
        """A copy the client makes itself (synchronous, or asynchronous with pageable memory, done
        when the call returns): ordered and timed like any copy on its stream, the bytes left to
        the client, once vgpud has checked that the allocation is still the one the client
        mapped."""
        gpu = self._gpu_of_address(address)
        queue_on = stream if stream is not None else self._default_stream(c)
        if gpu is None or queue_on is None or self._held(queue_on) is not None or self.capturing(stream) is not None:
            return protocol.CLIENT_COPY_REFUSED
        found = gpu.memory.client_store(c.session.id, address, copy.size)
        if found is None or found[0].serial != copy.serial:
            return protocol.CLIENT_COPY_REFUSED
        return self._timed(c, stream, self._pcie_seconds(gpu, copy.size), lambda memory: None, address)
