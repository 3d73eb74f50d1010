"""visrec gateway: the gRPC service, its pure core, and adapters for Triton and Milvus."""
