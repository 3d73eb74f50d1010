# Developer shortcuts; CI runs the same scripts (.ci/run -> scripts/test).
.PHONY: setup run serve test unit lint proto export triton-start triton-stop catalog ingest gateway bench images images-full stack clean

setup:            ## install system + Python dependencies into .venv, generate gRPC stubs
	./scripts/setup
run:              ## the main job: export, Triton, ingest, gateway, print recommendations
	./scripts/run
serve:            ## the same, and keep the stack up until Ctrl-C
	./scripts/run --serve
test:             ## lint, types, all tests (real Triton / Milvus / Prometheus)
	./scripts/test
unit: setup       ## unit tests only (no servers)
	.venv/bin/pytest tests/unit
lint: setup
	.venv/bin/ruff check . && .venv/bin/mypy
proto:
	.venv/bin/python scripts/gen_protos.py
export: setup
	.venv/bin/visrec-export
triton-start: setup
	.venv/bin/visrec-triton start
triton-stop:
	.venv/bin/visrec-triton stop
catalog: setup
	.venv/bin/visrec-catalog
ingest: setup
	.venv/bin/visrec-ingest
gateway: setup
	.venv/bin/visrec-gateway
bench: setup      ## every benchmark side by side, report in artifacts/bench/report.md
	.venv/bin/python -m bench $(BENCH_ARGS)
images: setup     ## build every image with podman (base images from Debian packages)
	.venv/bin/visrec-images
images-full: setup  ## the same, with the export image's torch (~5 GB)
	.venv/bin/visrec-images --full-export
stack: images     ## the production compose stack on CPU, with podman and local stand-ins
	.venv/bin/visrec-stack up
clean:            ## remove generated files (keeps .venv and the npm cache)
	rm -rf build visrec/platform/_pb data/catalog data/milvus.db data/triton \
	  model_repository/image_encoder/[0-9]* model_repository/*/config.pbtxt
