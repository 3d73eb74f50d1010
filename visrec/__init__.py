"""visrec: visual recommendations with Triton image embeddings, Milvus neighbours and a gRPC
gateway with A/B-tested ranking.

One import namespace for three parts, each a top-level folder of the repository (this folder
links to them):

- ``visrec.gateway`` (``gateway/``): the recommendation service, the only code in the gateway
  image: a pure core, adapters for Triton and Milvus, the gRPC process.
- ``visrec.export`` (``export/``): the machine-learning service: export models into the Triton
  repository, train and evaluate them, embed catalogs into Milvus, roll versions out.
- ``visrec.local`` (``local/``): local tooling: the demo, the storefront, the simulation, panels,
  and launchers of Triton, Milvus and Prometheus for tests and laptops.
"""
