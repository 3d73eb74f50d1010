"""visrec-demo: the whole path on this machine, then real recommendations.

export (skipped when done) -> Triton on CPU -> demo catalog -> ingest into Milvus Lite (skipped
when done) -> gateway -> SimilarItems for an emoji and SearchByImage with scikit-image photos.
Every step reuses what a previous run left, so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visrec.local.demo_catalog import DEFAULT_OUT, CatalogError, build_catalog
from visrec.local.prometheus_server import PrometheusServer
from visrec.local.triton_server import DEFAULT_REPOSITORY, TritonLaunchError, TritonServer
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def step(title: str) -> float:
    print(f"\n\033[1m== {title}\033[0m", flush=True)
    return time.perf_counter()


def done(start: float, what: str = "done") -> None:
    print(f"   {what} in {time.perf_counter() - start:.1f}s", flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"visrec-demo: `{' '.join(cmd[:3])} ...` failed "
                         f"(exit code {proc.returncode})")


def wait_serving(address: str, process: subprocess.Popen[bytes] | None = None,
                 timeout: float = 60.0) -> None:
    """Until the gateway at ``address`` is SERVING; stops if ``process`` (that gateway) exits."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                raise SystemExit(f"visrec-demo: the gateway exited with code {process.returncode} "
                                 f"before serving (its error is above)")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise SystemExit(f"visrec-demo: the gateway at {address} did not become healthy")


def show(title: str, reply: pb.Recommendations, seconds: float) -> None:
    arm = f"arm {reply.arm}, " if reply.experiment else ""
    degraded = f", fallback: {reply.degraded}" if reply.degraded else ""
    print(f"\n   {title}   [{seconds * 1000:.0f} ms, model v{reply.model_version}, {arm}"
          f"policy {reply.policy}{degraded}, request {reply.request_id[:8]}]")
    for rank, hit in enumerate(reply.items, 1):
        it = hit.item
        vendor = it.attributes.fields["vendor"].string_value if "vendor" in it.attributes.fields \
            else ""
        print(f"   {rank:2d}. {hit.score:.3f}  {it.name[:34]:34s} {it.subcategory:22s} {vendor}")


def photo(name: str, fmt: str, **save: Any) -> bytes:
    """A scikit-image sample photo encoded as ``fmt`` (Pillow save options in ``save``)."""
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(getattr(data, name)()).save(buf, format=fmt, **save)
    return buf.getvalue()


def query(address: str, item_id: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        twitter = pb.Filter(conditions=[pb.Condition(field="vendor", equals="twitter")])
        for title, call in (
            (f"SimilarItems({item_id}, k=8)",
             lambda: stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=8), timeout=10)),
            (f"SimilarItems({item_id}, k=5, vendor == twitter)",
             lambda: stub.SimilarItems(pb.SimilarItemsRequest(item_id=item_id, k=5,
                                                              filter=twitter), timeout=10)),
            ("SearchByImage(scikit-image 'chelsea' JPEG photo of a cat, k=5)",
             lambda: stub.SearchByImage(pb.SearchByImageRequest(
                 image=photo("chelsea", "JPEG"), k=5), timeout=30)),
            ("SearchByImage(scikit-image 'coffee' PNG photo, k=5, category in [Food & Drink])",
             lambda: stub.SearchByImage(pb.SearchByImageRequest(
                 image=photo("coffee", "PNG"), k=5, filter=pb.Filter(conditions=[
                     pb.Condition(field="category",
                                  any_of=pb.StringSet(values=["Food & Drink"]))])),
                 timeout=30)),
        ):
            start = time.perf_counter()
            reply = call()
            show(title, reply, time.perf_counter() - start)

        user = f"demo-{uuid.uuid4().hex[:6]}"
        start = time.perf_counter()
        show(f"Recommend({user}, k=5) before any interaction",
             stub.Recommend(pb.RecommendRequest(user_id=user, k=5), timeout=10),
             time.perf_counter() - start)
        fruit = ["google:1f34d", "google:1f350", "google:1f352"]  # pineapple, pear, cherries
        for item_id in fruit:
            stub.RecordInteraction(pb.RecordInteractionRequest(
                user_id=user, item_id=item_id, type=pb.INTERACTION_TYPE_CLICK,
                request_id=uuid.uuid4().hex), timeout=10)
        start = time.perf_counter()
        show(f"Recommend({user}, k=8, exclude_seen) after clicks on pineapple, pear, cherries",
             stub.Recommend(pb.RecommendRequest(user_id=user, k=8, exclude_seen=True),
                            timeout=10),
             time.perf_counter() - start)


# The catalog head: pictures sharing `unified` (one emoji, two vendors) are positives.
CATALOG_HEAD = ["--group-by", "unified", "--catalog-only", "--epochs", "10", "--temperature",
                "0.05"]


def held_out_example(catalog: Path) -> str:
    """The first google drawing whose emoji training never sees (held out) and that twitter
    draws too: the query the demo asks before and after learning from the catalog."""
    from visrec.export.training.holdout import catalog_groups

    groups = catalog_groups(catalog, "unified", "vendor")
    drawn = {g for i, g in groups.group_of.items() if groups.source_of.get(i) == "twitter"}
    found = next((i for i in sorted(groups.group_of) if groups.source_of.get(i) == "google"
                  and groups.group_of[i] in drawn and groups.held_out(i, 20.0)), None)
    if found is None:
        raise SystemExit(f"visrec-demo: no held-out emoji of {catalog} is drawn by both vendors")
    return found


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def show_twin(address: str, item_id: str, when: str) -> str:
    """SimilarItems(item, vendor == twitter): where its twitter twin ranks; the version."""
    twin = "twitter:" + item_id.split(":", 1)[1]
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        start = time.perf_counter()
        reply = stub.SimilarItems(pb.SimilarItemsRequest(
            item_id=item_id, k=5, filter=pb.Filter(conditions=[
                pb.Condition(field="vendor", equals="twitter")])), timeout=10)
    ids = [h.item.id for h in reply.items]
    rank = f"rank {ids.index(twin) + 1}" if twin in ids else "not in the top 5"
    show(f"SimilarItems({item_id}, k=5, vendor == twitter) {when}: its twin {twin} is {rank}",
         reply, time.perf_counter() - start)
    return str(reply.model_version)


def train_catalog_head(bin_dir: Path, catalog: Path, milvus_uri: str, triton_url: str,
                       repository: Path) -> str:
    """visrec-train on the catalog's groups (from version 1's vectors), visrec-export,
    visrec-rollout, visrec-evaluate on held-out groups; returns the new version."""
    out = ROOT / "artifacts" / "train-catalog"
    common = ["--milvus-uri", milvus_uri]
    run([str(bin_dir / "visrec-train"), *common, "--repository", str(repository), "--catalog",
         str(catalog), "--from-version", "1", "--out", str(out), "--fresh", "--quiet",
         *CATALOG_HEAD])
    export = subprocess.run([str(bin_dir / "visrec-export"), "--target", "cpu", "--quiet",
                             "--repository", str(repository), "--head", str(out / "head.pt")],
                            capture_output=True, text=True, check=False)
    if export.returncode != 0:
        raise SystemExit(f"visrec-demo: visrec-export failed:\n{export.stderr[-2000:]}")
    version = export.stdout.split()[-1]
    run([str(bin_dir / "visrec-rollout"), "--to", version, "--catalog", str(catalog), *common,
         "--triton-url", triton_url, "--repository", str(repository), "--grace-s", "0", "-q"])
    run([str(bin_dir / "visrec-evaluate"), "1", version, *common, "--group-by", "unified",
         "--catalog", str(catalog), "--json", str(out / "evaluate.json")])
    return version


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-demo",
        description="Export the default model, start Triton on CPU, ingest the emoji demo "
                    "catalog into Milvus Lite, start the gateway and print real "
                    "recommendations. Reuses whatever a previous run built.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--item", default="google:1f34e", help="item for SimilarItems (red apple)")
    p.add_argument("--grpc-port", type=int, default=50051, help="gateway port")
    p.add_argument("--metrics-port", type=int, default=9464, help="gateway /metrics port")
    p.add_argument("--triton-grpc-port", type=int, default=8001)
    p.add_argument("--triton-http-port", type=int, default=8000)
    p.add_argument("--triton-metrics-port", type=int, default=8002)
    p.add_argument("--milvus-uri", default=str(DATA / "milvus.db"))
    p.add_argument("--repository", type=Path, default=DEFAULT_REPOSITORY,
                   help="Triton model repository to export into and serve")
    p.add_argument("--serve", action="store_true",
                   help="keep Triton, the gateway and the storefront (a web page, see "
                        "--storefront-port) running until Ctrl-C")
    p.add_argument("--prometheus", action="store_true",
                   help="also start Prometheus (Debian's package) with monitoring/prometheus "
                        "config and alert rules, scraping the gateway and Triton")
    p.add_argument("--prometheus-port", type=int, default=9090)
    p.add_argument("--storefront-port", type=int, default=8080,
                   help="with --serve: the demo storefront (a web page on the gateway)")
    p.add_argument("--train-catalog", action="store_true",
                   help="then learn 'same product, other picture' from the catalog: train a "
                        "head on emoji drawn by both vendors (held-out emoji never read), "
                        "export it, roll it out (the gateway is stopped meanwhile: Milvus Lite "
                        "is one process per file) and ask the same question again (~3 min)")
    args = p.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    address = f"localhost:{args.grpc_port}"

    t = step("1/5 export EfficientNet-Lite0 (ImageNet weights) to ONNX -> model_repository")
    run([str(bin_dir / "visrec-export"), "--target", "cpu", "--repository",
         str(args.repository)])
    done(t)

    t = step("2/5 start Triton on CPU (tritonserver 2.51 from the nvidia-pytriton wheel)")
    triton = TritonServer(repository=args.repository.resolve(),
                          http_port=args.triton_http_port,
                          grpc_port=args.triton_grpc_port, metrics_port=args.triton_metrics_port,
                          log_file=DATA / "triton" / "tritonserver.log")
    owns_triton = not triton.is_ready()
    try:
        if owns_triton:
            triton.start()
        else:
            print(f"   reusing the Triton server already ready at {triton.http_url}")
    except TritonLaunchError as e:
        raise SystemExit(f"visrec-demo: {e}") from e
    done(t, f"ready at {triton.grpc_url}")

    gateway: subprocess.Popen[bytes] | None = None
    prometheus: PrometheusServer | None = None
    signal.signal(signal.SIGTERM, _interrupt)  # stop what we started on SIGTERM too
    try:
        t = step("3/5 demo catalog: emoji-datasource google + twitter (npm pack, cached)")
        try:
            catalog = build_catalog(DEFAULT_OUT)
        except CatalogError as e:
            raise SystemExit(f"visrec-demo: {e}") from e
        done(t, f"{catalog} ({sum(1 for _ in catalog.open())} items)")

        t = step("4/5 ingest: images -> Triton image_embedding -> Milvus Lite")
        run([str(bin_dir / "visrec-ingest"), "--catalog", str(catalog), "--milvus-uri",
             args.milvus_uri, "--triton-url", triton.grpc_url])
        done(t)

        t = step("5/5 start the gateway")
        env = {**os.environ, "VISREC_GRPC_ADDRESS": f"[::]:{args.grpc_port}",
               "VISREC_METRICS_PORT": str(args.metrics_port),
               "VISREC_TRITON_URL": triton.grpc_url, "VISREC_MILVUS_URI": args.milvus_uri,
               "VISREC_LOG_FORMAT": "text", "VISREC_LOG_LEVEL": "WARNING",
               "VISREC_EXPERIMENT": os.environ.get("VISREC_EXPERIMENT", "demo"),
               "VISREC_EXPERIMENT_ARMS": os.environ.get(
                   "VISREC_EXPERIMENT_ARMS", "similar=similarity:50, diverse=mmr(0.7):50")}
        for port in (args.grpc_port, args.metrics_port):
            if not port_free(port):
                raise SystemExit(f"visrec-demo: port {port} is in use (another visrec-demo or "
                                 f"visrec-gateway still running?); stop it or pick other ports")

        def start_gateway() -> subprocess.Popen[bytes]:
            process = subprocess.Popen([str(bin_dir / "visrec-gateway")], env=env)
            wait_serving(address, process)
            return process

        gateway = start_gateway()
        done(t, f"serving on {address}, metrics on :{args.metrics_port}/metrics")

        if args.prometheus:
            t = step("   Prometheus")
            prometheus = PrometheusServer(
                targets={"visrec-gateway": [f"127.0.0.1:{args.metrics_port}"],
                         "triton": [f"127.0.0.1:{args.triton_metrics_port}"]},
                data_dir=DATA / "prometheus", port=args.prometheus_port,
                scrape_interval="5s").start()
            done(t, f"{prometheus.url} (alerts: {prometheus.url}/alerts; dashboards as PNG: "
                    f"visrec-panels --prometheus {prometheus.url})")

        query(address, args.item)
        if args.train_catalog:
            example = held_out_example(catalog)
            if show_twin(address, example, "before") != "1":
                # An earlier --train-catalog left its version serving: from version 1 again.
                stop(gateway)
                run([str(bin_dir / "visrec-rollout"), "--to", "1", "--milvus-uri",
                     args.milvus_uri, "--triton-url", triton.grpc_url, "--repository",
                     str(args.repository), "--grace-s", "0", "-q"])
                gateway = start_gateway()
                show_twin(address, example, "before, back on version 1")
            stop(gateway)
            t = step("+   learn 'same product, other picture' from the catalog: train, export, "
                     "roll out, evaluate on emoji training never saw")
            version = train_catalog_head(bin_dir, catalog, args.milvus_uri, triton.grpc_url,
                                         args.repository)
            gateway = start_gateway()
            done(t, f"version {version} serves")
            show_twin(address, example, f"after (version {version})")
        if args.serve:
            from visrec.local.storefront.server import Storefront, StorefrontServer

            try:
                storefront = StorefrontServer(Storefront(address, catalog.parent),
                                              port=args.storefront_port).start()
            except OSError as e:
                raise SystemExit(f"visrec-demo: storefront port {args.storefront_port}: {e}"
                                 ) from e
            print(f"\nServing: gRPC {address} (reflection on), Triton {triton.http_url}, "
                  f"storefront {storefront.url}. Ctrl-C stops.")
            gateway.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if prometheus is not None:
            prometheus.stop()
        if gateway is not None and gateway.poll() is None:
            stop(gateway)
        if owns_triton:
            triton.stop()
    return 0


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
