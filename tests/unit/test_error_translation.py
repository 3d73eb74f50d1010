"""Library errors become the service's own at the adapter edge, by type and status code, never by
what their message says (a message is for people and changes between releases)."""

from __future__ import annotations

import grpc
import pytest
from pymilvus.exceptions import MilvusException
from tritonclient.utils import InferenceServerException

from visrec.platform.errors import (
    BackendTimeout,
    BackendUnavailable,
    InvalidArgument,
    VersionNotServed,
)
from visrec.platform.milvus.connection import CollectionReleased, translate
from visrec.platform.triton_embedder import _translate as translate_triton


class RpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def _wrapped(outer: Exception, cause: Exception) -> Exception:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize("error, expected", [
    (RpcError(grpc.StatusCode.DEADLINE_EXCEEDED), BackendTimeout),
    (RpcError(grpc.StatusCode.UNAVAILABLE, "deadline timeout"), BackendUnavailable),
    (TimeoutError(), BackendTimeout),
    (ConnectionRefusedError(), BackendUnavailable),
    (MilvusException(code=101, message="whatever the text"), CollectionReleased),
    (MilvusException(code=1, message="Retry timeout: 5s, deadline"), BackendUnavailable),
    # pymilvus' retries gave up: the transport error under it decides
    (_wrapped(MilvusException(message="retry"), RpcError(grpc.StatusCode.DEADLINE_EXCEEDED)),
     BackendTimeout),
])
def test_milvus_errors_map_by_type_and_code(error, expected):
    assert type(translate(error, "http://milvus:19530")) is expected


def test_an_error_that_is_not_the_librarys_is_not_swallowed():
    assert translate(ValueError("a bug"), "x.db") is None


@pytest.mark.parametrize("status, message, expected", [
    ("StatusCode.INVALID_ARGUMENT", "in ensemble 'image_embedding', cannot decode",
     InvalidArgument),
    ("StatusCode.DEADLINE_EXCEEDED", "", BackendTimeout),
    ("StatusCode.NOT_FOUND", "Request for unknown model", VersionNotServed),
    ("StatusCode.UNAVAILABLE", "Deadline Exceeded", BackendUnavailable),  # the text decides nothing
    ("StatusCode.INTERNAL", "unknown model", BackendUnavailable),
])
def test_triton_errors_map_by_status_code(status, message, expected):
    error = translate_triton(InferenceServerException(message, status=status), "triton:8001",
                             "image_embedding version 2")
    assert type(error) is expected
    if expected is InvalidArgument:
        assert str(error) == "image rejected: cannot decode"  # the ensemble prefix stripped
