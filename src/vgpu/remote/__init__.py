"""GPUs over the network: tenants and their tokens, TLS, and the relay that forwards a host's
clients to a GPU host's vgpud (``vgpud --backend remote``)."""
