"""visrec-storefront: a small demo shop in the browser, a gRPC client of the gateway.

Choose a user id and see Recommend's image grid with the arm, policy and model version that
served it; click an item to record the click (RecordInteraction) and see its SimilarItems;
upload a photo to SearchByImage; add a product (photo, name, category) with UpsertItems and see
it found by its own photo. Every decision is the gateway's: this server only translates
HTTP + JSON to gRPC and serves the catalog's images. Gateway errors come back as JSON
``{"error": CODE, "message": ...}`` with a matching HTTP status, and the page shows them.
"""

from __future__ import annotations

import argparse
import json
import logging
import mimetypes
import sys
import threading
import uuid
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc

from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

log = logging.getLogger("visrec.storefront")

STATIC = Path(__file__).resolve().parent / "static"
UPLOADS = "uploads"

# gRPC status -> HTTP status of the JSON error the page shows.
HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.CONFLICT,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
}


class BadRequest(Exception):
    """A mistake in the browser's request, answered 400 before the gateway is asked."""


class Storefront:
    """The HTTP side: one gRPC channel to the gateway, shared by the handler threads."""

    def __init__(self, gateway: str, catalog_dir: Path, *, token: str = "",
                 timeout_s: float = 30.0, max_upload_bytes: int = 10 * 1024 * 1024,
                 uploads_dir: Path | None = None) -> None:
        self.channel = grpc.insecure_channel(gateway)
        self.stub = pb_grpc.RecommenderStub(self.channel)
        self.catalog_dir = catalog_dir.resolve()
        # Photos of products added here; served as /images/uploads/<file>.
        self.uploads_dir = (uploads_dir or self.catalog_dir / UPLOADS).resolve()
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout_s = timeout_s
        self.max_upload_bytes = max_upload_bytes

    def close(self) -> None:
        self.channel.close()

    def call(self, method: Callable[..., Any], request: Any) -> Any:
        return method(request, timeout=self.timeout_s, metadata=self.metadata)

    # ------------------------------------------------------------------ API
    def recommend(self, q: dict[str, str]) -> dict[str, Any]:
        reply = self.call(self.stub.Recommend, pb.RecommendRequest(
            user_id=q.get("user", ""), k=_int(q, "k", 12),
            exclude_seen=q.get("exclude_seen", "") in ("1", "true")))
        return self._recommendations(reply)

    def similar(self, q: dict[str, str]) -> dict[str, Any]:
        reply = self.call(self.stub.SimilarItems, pb.SimilarItemsRequest(
            item_id=q.get("item", ""), k=_int(q, "k", 8)))
        return self._recommendations(reply)

    def search(self, q: dict[str, str], image: bytes) -> dict[str, Any]:
        reply = self.call(self.stub.SearchByImage,
                          pb.SearchByImageRequest(image=image, k=_int(q, "k", 12)))
        return self._recommendations(reply)

    def click(self, body: dict[str, Any]) -> dict[str, Any]:
        reply = self.call(self.stub.RecordInteraction, pb.RecordInteractionRequest(
            user_id=str(body.get("user", "")), item_id=str(body.get("item", "")),
            type=pb.INTERACTION_TYPE_CLICK,
            request_id=str(body.get("request_id") or uuid.uuid4().hex)))
        return {"counted": reply.counted, "experiment": reply.experiment, "arm": reply.arm}

    def add_product(self, q: dict[str, str], image: bytes) -> dict[str, Any]:
        """UpsertItems with one item: the photo is kept beside the catalog's images (the
        gateway stores the vector, this shop serves the picture)."""
        name, category = q.get("name", "").strip(), q.get("category", "").strip()
        if not name or not category:
            raise BadRequest("a product needs a name and a category")
        kind = imghdr_of(image)
        if kind is None:
            raise BadRequest("the photo must be a JPEG, PNG, GIF, WebP or BMP file")
        item_id = f"shop-{uuid.uuid4().hex[:12]}"
        filename = f"{item_id}.{kind}"
        request = pb.UpsertItemsRequest(image=image, item=pb.Item(
            id=item_id, name=name, category=category, subcategory="added in the shop",
            image_uri=f"{UPLOADS}/{filename}"))
        reply = self.stub.UpsertItems(iter([request]), timeout=self.timeout_s,
                                      metadata=self.metadata)
        self.uploads_dir.mkdir(parents=True, exist_ok=True)
        (self.uploads_dir / filename).write_bytes(image)
        return {"id": item_id, "upserted": reply.upserted, "model_version": reply.model_version}

    def _recommendations(self, reply: Any) -> dict[str, Any]:
        items = []
        for hit in reply.items:
            it = hit.item
            vendor = it.attributes.fields.get("vendor")
            items.append({
                "id": it.id, "name": it.name, "category": it.category,
                "subcategory": it.subcategory, "score": round(hit.score, 4),
                "vendor": vendor.string_value if vendor is not None else "",
                "image": f"/images/{it.image_uri}" if it.image_uri else ""})
        return {"items": items, "request_id": reply.request_id,
                "experiment": reply.experiment, "arm": reply.arm, "policy": reply.policy,
                "model_version": reply.model_version, "degraded": reply.degraded}

    def image_path(self, relative: str) -> Path | None:
        """A file under the catalog directory, or an added product's photo (nothing outside
        them)."""
        relative = unquote(relative)
        base = self.catalog_dir
        if relative.startswith(f"{UPLOADS}/"):
            base, relative = self.uploads_dir, relative.removeprefix(f"{UPLOADS}/")
        path = (base / relative).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return path


def imghdr_of(data: bytes) -> str | None:
    """The file extension of an image format the gateway accepts, by its magic bytes."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def _int(q: dict[str, str], name: str, default: int) -> int:
    raw = q.get(name, "")
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, got {raw!r}") from None


def make_handler(shop: Storefront) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "visrec-storefront"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode(), "application/json")

        def _error(self, status: int, code: str, message: str) -> None:
            self._json(status, {"error": code, "message": message})

        def _api(self, fn: Callable[[], dict[str, Any]]) -> None:
            try:
                self._json(HTTPStatus.OK, fn())
            except BadRequest as e:
                self._error(HTTPStatus.BAD_REQUEST, "INVALID_ARGUMENT", str(e))
            except grpc.RpcError as e:
                code = e.code()
                self._error(HTTP_OF.get(code, HTTPStatus.BAD_GATEWAY), code.name,
                            e.details() or code.name)

        def _query(self) -> dict[str, str]:
            return {k: v[-1] for k, v in parse_qs(urlsplit(self.path).query).items()}

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path in ("/", "/index.html"):
                self._file(STATIC / "index.html")
            elif path.startswith("/static/"):
                name = path.removeprefix("/static/")
                target = (STATIC / name).resolve()
                if target.is_relative_to(STATIC) and target.is_file():
                    self._file(target)
                else:
                    self._error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no static file {name}")
            elif path.startswith("/images/"):
                found = shop.image_path(path.removeprefix("/images/"))
                if found is None:
                    self._error(HTTPStatus.NOT_FOUND, "NOT_FOUND", "no such image")
                else:
                    self._file(found)
            elif path == "/api/recommend":
                self._api(lambda: shop.recommend(self._query()))
            elif path == "/api/similar":
                self._api(lambda: shop.similar(self._query()))
            elif path == "/healthz":
                self._json(HTTPStatus.OK, {"status": "ok"})
            else:
                self._error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no page {path}")

        def do_POST(self) -> None:
            path = urlsplit(self.path).path
            length = int(self.headers.get("Content-Length") or 0)
            if length > shop.max_upload_bytes:
                while length > 0:  # drain it, so the browser reads the answer
                    length -= len(self.rfile.read(min(length, 1 << 16)) or b"\0" * length)
                self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "INVALID_ARGUMENT",
                            f"the upload is {int(self.headers['Content-Length'])} bytes; the "
                            f"limit is {shop.max_upload_bytes}")
                return
            body = self.rfile.read(length) if length else b""
            if path == "/api/search":
                self._api(lambda: shop.search(self._query(), body))
            elif path == "/api/click":
                self._api(lambda: shop.click(_json_body(body)))
            elif path == "/api/products":
                self._api(lambda: shop.add_product(self._query(), body))
            else:
                self._error(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"no endpoint {path}")

        def _file(self, path: Path) -> None:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            self._send(HTTPStatus.OK, path.read_bytes(), kind)

    return Handler


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest("the body must be a JSON object")
    return value


class StorefrontServer:
    """The HTTP server on a thread (``port`` 0 picks a free one)."""

    def __init__(self, shop: Storefront, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.shop = shop
        self.httpd = ThreadingHTTPServer((host, port), make_handler(shop))
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> StorefrontServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.shop.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="visrec-storefront", description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--gateway", default="localhost:50051", help="gateway gRPC address")
    p.add_argument("--catalog-dir", type=Path, default=Path("data/catalog"),
                   help="directory the catalog's image paths are relative to")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8080, help="HTTP port")
    p.add_argument("--token", default="", help="bearer token for the gateway, if it needs one")
    p.add_argument("--timeout-s", type=float, default=30.0, help="deadline of each gateway call")
    p.add_argument("--uploads-dir", type=Path, default=None,
                   help="where photos of products added in the shop are kept (default: "
                        "uploads/ in --catalog-dir)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.catalog_dir.is_dir():
        p.error(f"--catalog-dir {args.catalog_dir} is not a directory")
    try:
        server = StorefrontServer(Storefront(args.gateway, args.catalog_dir, token=args.token,
                                             timeout_s=args.timeout_s,
                                             uploads_dir=args.uploads_dir),
                                  args.host, args.port)
    except OSError as e:
        print(f"visrec-storefront: cannot listen on {args.host}:{args.port}: {e}",
              file=sys.stderr)
        return 1
    print(f"storefront on {server.url} (gateway {args.gateway}); Ctrl-C stops", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.httpd.server_close()
        server.shop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
