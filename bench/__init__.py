"""Benchmarks: perf_analyzer against Triton, the in-process ONNX Runtime ceiling, a gateway load
generator, direct Milvus searches, ingest and ANN scale; one report. Run: make bench."""
