"""What both services stand on: the recommendation service (``visrec.gateway``) and the
machine-learning service (``visrec.export``) each import this package and never each other.

- ``domain``, ``errors``: plain data and the errors every layer raises (no I/O).
- ``catalog``: what an item may hold, checked the same way by ingest and online changes.
- ``ports``: the narrow interfaces to Triton and Milvus that both services use.
- ``retrieval``: Recommend's multi-interest retrieval, shared with offline evaluation.
- ``settings``: ``VISREC_*`` settings, declared once; ``logs``: one log format for every process.
- ``milvus``, ``triton_embedder``: the real adapters behind the ports, library errors
  translated at their edge.
- ``_pb``: the gRPC stubs, generated from proto/ at set-up (git-ignored).
"""
