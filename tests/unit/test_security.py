"""TLS, bearer tokens, the per-client rate limit and the request deadline, over real gRPC
channels to a real grpc.aio server (in-memory adapters: the backends are not the point)."""

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import photo
from tests.timing import Stopwatch, refilled
from tests.unit.fakes import FakeChangeLog, FakeEmbedder, FakeItemWriter, InMemoryStore
from tests.unit.test_recommender_core import INDEX, _items
from visrec.gateway.api.security import SecurityConfigError, Token, TokenBuckets, load_tokens
from visrec.gateway.api.server import build_gateway
from visrec.gateway.config import ConfigError, GatewayConfig
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc

TOKEN = "s3cret-token-0123456789"
OTHER = "another-token-abcdefghij"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """A CA, a server certificate for localhost signed by it, and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.pem", "-days", "2", "-subj", "/CN=visrec test CA", cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "san.ext",
                 cwd=d)
    return d


async def _start(config: GatewayConfig):
    store = InMemoryStore(_items(), INDEX)
    gw = build_gateway(config, embedder=FakeEmbedder(), store=store,
                       editor=FakeItemWriter(store), changes=FakeChangeLog(store),
                       address="127.0.0.1:0", metrics_port=0)
    await gw.start()
    return gw


@pytest_asyncio.fixture(scope="module")
async def guarded():
    gw = await _start(GatewayConfig(auth_tokens=f"{TOKEN},{OTHER}", rate_limit_rps=5,
                                    rate_limit_burst=5))
    yield f"127.0.0.1:{gw.port}"
    await gw.stop()


def _similar(stub, token: str | None = TOKEN, **kw):
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    return stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=2), metadata=metadata,
                             timeout=5, **kw)


async def test_calls_need_a_valid_bearer_token_but_health_does_not(guarded):
    async with grpc.aio.insecure_channel(guarded) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        assert len((await _similar(stub, OTHER)).items) == 2  # either token of a rotation
        for token, message in ((None, "missing bearer token"),
                               ("wrong-token-0123456789", "not valid"),
                               (TOKEN[:-1], "not valid")):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await _similar(stub, token)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert message in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=2),
                                    metadata=(("authorization", f"Basic {TOKEN}"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_rate_limit_is_per_client_and_says_when_to_retry(guarded):
    async with grpc.aio.insecure_channel(guarded) as channel:
        stub = pb_grpc.RecommenderStub(channel)
        await asyncio.sleep(1.2)  # buckets refilled after the other tests
        with Stopwatch() as watch:
            results = await asyncio.gather(*(_similar(stub) for _ in range(12)),
                                           return_exceptions=True)
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        # the burst, plus what refilled while the 12 were admitted (measured: a loaded runner
        # admits them slower and refills more)
        assert 5 <= 12 - len(refused) <= 5 + refilled(watch.s, 5), (len(refused), watch.s)
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in refused)
        assert "rate limit of 5 requests/s exceeded" in refused[0].details()
        retry = dict(refused[0].trailing_metadata())["retry-after-ms"]
        assert 0 < int(retry) <= 1000
        # another client (its own token) is not limited by the first one's burst
        assert len((await _similar(stub, OTHER)).items) == 2
        await asyncio.sleep(int(retry) / 1000 + 0.05)
        assert len((await _similar(stub)).items) == 2


async def test_a_made_up_token_is_no_identity_for_the_rate_limit():
    """Without tokens configured, the limit keys on the address: rotating made-up bearer
    values does not buy more calls (before: 30 of 30 served)."""
    gw = await _start(GatewayConfig(rate_limit_rps=5, rate_limit_burst=5))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            with Stopwatch() as watch:
                results = await asyncio.gather(*(_similar(stub, f"made-up-token-{n:08d}")
                                                 for n in range(30)), return_exceptions=True)
        served = [r for r in results if not isinstance(r, BaseException)]
        assert 5 <= len(served) <= 5 + refilled(watch.s, 5), (len(served), watch.s)
        assert all(r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in results
                   if isinstance(r, grpc.aio.AioRpcError))
    finally:
        await gw.stop()


async def test_token_guessing_is_rate_limited_per_address():
    """Invalid tokens used to be refused before the limiter, so guessing was free: now an
    address that failed authentication 5 times waits, whatever it sends next."""
    gw = await _start(GatewayConfig(auth_tokens=TOKEN, auth_failures_per_minute=5))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            codes = []
            for n in range(8):
                try:
                    await _similar(stub, f"guess-number-{n:08d}")
                except grpc.aio.AioRpcError as e:
                    codes.append(e.code())
            assert codes[:5] == [grpc.StatusCode.UNAUTHENTICATED] * 5
            assert codes[5:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
            with pytest.raises(grpc.aio.AioRpcError) as locked:
                await _similar(stub, TOKEN)  # even a right guess is not tried now
            assert locked.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "too many failed authentications" in locked.value.details()
            assert int(dict(locked.value.trailing_metadata())["retry-after-ms"]) > 1000
    finally:
        await gw.stop()


async def test_catalog_changes_need_a_write_token_and_streams_are_admitted_like_calls():
    """UpsertItems is a client stream: before, streams skipped the interceptor entirely."""
    writer = "w-" + TOKEN
    gw = await _start(GatewayConfig(auth_tokens=f"{TOKEN},write:{writer}", rate_limit_rps=2,
                                    rate_limit_burst=2))

    def upsert(token: str | None):
        async def one():
            yield pb.UpsertItemsRequest(item=pb.Item(id="new", name="n"), image=photo())

        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        return stub.UpsertItems(one(), metadata=metadata, timeout=5)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                (TOKEN, grpc.StatusCode.PERMISSION_DENIED)):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await upsert(token)
                assert e.value.code() == code, e.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.DeleteItems(pb.DeleteItemsRequest(item_ids=["i1"]), timeout=5,
                                       metadata=(("authorization", f"Bearer {TOKEN}"),))
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "write" in e.value.details()
            await asyncio.sleep(1.1)  # the writer's bucket is its own and full
            assert (await upsert(writer)).upserted == 1
            assert len((await _similar(stub, writer)).items) == 2  # a writer may read
            with pytest.raises(grpc.aio.AioRpcError) as e:  # its bucket (2) is spent now
                await upsert(writer)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await gw.stop()


def test_token_bucket_refills_at_the_rate_and_forgets_old_clients():
    now = [0.0]
    b = TokenBuckets(rate=2, burst=2, max_clients=2, clock=lambda: now[0])
    assert [b.take("a"), b.take("a")] == [0, 0]
    assert b.take("a") == pytest.approx(0.5)
    now[0] = 0.5
    assert b.take("a") == 0  # one token back after 1/rate
    b.take("b"), b.take("c")  # "a" is the least recently seen: forgotten, full again
    assert b.take("a") == 0 and b.take("a") == 0


async def test_tls_serves_trusting_clients_and_refuses_plaintext(pki):
    gw = await _start(GatewayConfig(tls_cert_file=str(pki / "server.pem"),
                                    tls_key_file=str(pki / "server.key")))
    address = f"localhost:{gw.port}"
    try:
        creds = grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes())
        async with grpc.aio.secure_channel(address, creds) as channel:
            reply = await pb_grpc.RecommenderStub(channel).SimilarItems(
                pb.SimilarItemsRequest(item_id="i0", k=1), timeout=5)
            assert len(reply.items) == 1
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.RecommenderStub(channel).SimilarItems(
                    pb.SimilarItemsRequest(item_id="i0", k=1), timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "visrec.gateway.api.healthcheck", "--address", address,
            "--service", "liveness", "--tls-ca", str(pki / "ca.pem"),
            stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0 and out.decode().strip() == "SERVING"
    finally:
        await gw.stop()


async def test_mutual_tls_refuses_clients_without_a_certificate(pki):
    gw = await _start(GatewayConfig(tls_cert_file=str(pki / "server.pem"),
                                    tls_key_file=str(pki / "server.key"),
                                    tls_client_ca_file=str(pki / "ca.pem")))
    address = f"localhost:{gw.port}"
    ca = (pki / "ca.pem").read_bytes()
    request = pb.SimilarItemsRequest(item_id="i0", k=1)
    try:
        with_cert = grpc.ssl_channel_credentials(ca, (pki / "client.key").read_bytes(),
                                                 (pki / "client.pem").read_bytes())
        async with grpc.aio.secure_channel(address, with_cert) as channel:
            assert len((await pb_grpc.RecommenderStub(channel).SimilarItems(
                request, timeout=5)).items) == 1
        async with grpc.aio.secure_channel(address, grpc.ssl_channel_credentials(ca)) as ch:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await pb_grpc.RecommenderStub(ch).SimilarItems(request, timeout=3)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await gw.stop()


async def test_slow_calls_end_with_deadline_exceeded_at_the_server_cap():
    class SlowEmbedder(FakeEmbedder):
        async def embed(self, images, *, model_version):
            await asyncio.sleep(5)
            return await super().embed(images, model_version=model_version)

    gw = build_gateway(GatewayConfig(request_timeout_s=0.3), embedder=SlowEmbedder(),
                       store=InMemoryStore(_items(), INDEX), address="127.0.0.1:0",
                       metrics_port=0)
    await gw.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.port}") as channel:
            stub = pb_grpc.RecommenderStub(channel)
            t = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.SearchByImage(pb.SearchByImageRequest(image=photo(), k=1),
                                         timeout=10)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "within 0.30s" in e.value.details()
            assert asyncio.get_running_loop().time() - t < 2
            # fast calls are untouched by the cap
            assert len((await stub.SimilarItems(pb.SimilarItemsRequest(item_id="i0", k=1),
                                                timeout=5)).items) == 1
    finally:
        await gw.stop()


def test_bad_security_settings_are_configuration_errors(tmp_path):
    with pytest.raises(ConfigError, match="needs both"):
        GatewayConfig(tls_cert_file="cert.pem")
    with pytest.raises(ConfigError, match="mutual TLS"):
        GatewayConfig(tls_client_ca_file="ca.pem")
    with pytest.raises(ConfigError, match="VISREC_RATE_LIMIT_RPS must be >= 0"):
        GatewayConfig(rate_limit_rps=-1)
    with pytest.raises(SecurityConfigError, match="at least 16"):
        load_tokens("short", "")
    (tmp_path / "tokens").write_text("# rotated monthly\n\n")
    with pytest.raises(SecurityConfigError, match="holds no token"):
        load_tokens("", str(tmp_path / "tokens"))
    (tmp_path / "tokens").write_text(f"# rotated monthly\n{TOKEN}\n")  # a plain token reads
    assert load_tokens("", str(tmp_path / "tokens")) == (Token(TOKEN.encode(), can_write=False),)
    (tmp_path / "tokens").write_text(f"# rotated monthly\nwrite:{TOKEN}\n")
    assert load_tokens(OTHER, str(tmp_path / "tokens")) == (
        Token(OTHER.encode(), can_write=False), Token(TOKEN.encode(), can_write=True))
    (tmp_path / "cert.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="is not PEM"):
        build_gateway(GatewayConfig(tls_cert_file=str(tmp_path / "cert.pem"),
                                    tls_key_file=str(tmp_path / "cert.pem")),
                      embedder=FakeEmbedder(), store=InMemoryStore(_items(), INDEX),
                      address="127.0.0.1:0")
    (tmp_path / "real.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="cannot read the TLS private key"):
        build_gateway(GatewayConfig(tls_cert_file=str(tmp_path / "real.pem"),
                                    tls_key_file=str(tmp_path / "missing.key")),
                      embedder=FakeEmbedder(), store=InMemoryStore(_items(), INDEX),
                      address="127.0.0.1:0")
