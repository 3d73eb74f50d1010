"""visrec-healthcheck: exit 0 when the gateway's grpc.health.v1 says SERVING (for Docker's
HEALTHCHECK; Kubernetes uses its native gRPC probes)."""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="visrec-healthcheck", description=__doc__)
    p.add_argument("--address", default="127.0.0.1:50051", help="gateway gRPC address")
    p.add_argument("--service", default="", help="service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    p.add_argument("--tls-ca", default="", help="PEM CA that signed the gateway's certificate "
                   "(the gateway serves TLS: VISREC_TLS_CERT_FILE)")
    p.add_argument("--tls-server-name", default="",
                   help="name to verify in the certificate (default: the address's host)")
    args = p.parse_args(argv)
    try:
        if args.tls_ca:
            with open(args.tls_ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            options = ([("grpc.ssl_target_name_override", args.tls_server_name)]
                       if args.tls_server_name else [])
            channel = grpc.secure_channel(args.address, credentials, options=options)
        else:
            channel = grpc.insecure_channel(args.address)
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as e:
        print(f"unhealthy: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"cannot read {args.tls_ca}: {e.strerror}", file=sys.stderr)
        return 2
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
