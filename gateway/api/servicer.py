"""The gRPC servicer only translates: protobuf in -> one core call -> protobuf out.

Errors are mapped to status codes in one table (visrec.gateway.api.status) and aborted in one
place here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from google.protobuf.struct_pb2 import Struct

from visrec.gateway.api.status import status_for
from visrec.gateway.core.checks import Limits
from visrec.gateway.core.recommender import RecommenderCore
from visrec.platform._pb.visrec.v1 import recommender_pb2 as pb
from visrec.platform._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.platform.domain import (
    AnyOf,
    AttributeValue,
    Condition,
    Equals,
    Item,
    ItemUpsert,
    Range,
    Recommendations,
    UpsertResult,
)
from visrec.platform.errors import InvalidArgument, VisrecError
from visrec.platform.logs import request_id_var

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"
ARM_OVERRIDE_HEADER = "x-visrec-arm"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
INTERACTION_KINDS = {
    pb.INTERACTION_TYPE_VIEW: "view",
    pb.INTERACTION_TYPE_CLICK: "click",
    pb.INTERACTION_TYPE_ADD_TO_CART: "add_to_cart",
    pb.INTERACTION_TYPE_PURCHASE: "purchase",
}
T = TypeVar("T")
M = TypeVar("M")


def conditions_from_pb(flt: pb.Filter) -> list[Condition]:
    out: list[Condition] = []
    for i, c in enumerate(flt.conditions):
        if not c.field:
            raise InvalidArgument(f"filter condition #{i} has no field")
        test = c.WhichOneof("test")
        if test == "equals":
            out.append(Equals(c.field, c.equals))
        elif test == "any_of":
            out.append(AnyOf(c.field, tuple(c.any_of.values)))
        elif test == "range":
            out.append(Range(
                c.field,
                c.range.min if c.range.HasField("min") else None,
                c.range.max if c.range.HasField("max") else None,
            ))
        else:
            raise InvalidArgument(
                f"filter condition on {c.field!r} has no test (equals, any_of or range)"
            )
    return out


def recommendations_to_pb(r: Recommendations) -> pb.Recommendations:
    msg = pb.Recommendations(
        request_id=r.request_id, experiment=r.experiment, arm=r.arm, policy=r.policy,
        model_version=r.model_version, degraded=r.degraded,
    )
    for scored in r.items:
        it = scored.item
        entry = msg.items.add(score=scored.score)
        entry.item.id = it.id
        entry.item.name = it.name
        entry.item.category = it.category
        entry.item.subcategory = it.subcategory
        entry.item.image_uri = it.image_uri
        entry.item.attributes.update(dict(it.attributes))
    return msg


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id when it is a sane token, else a fresh one."""
    value = _metadata(context, REQUEST_ID_HEADER)
    return value if value and _SAFE_REQUEST_ID.match(value) else uuid.uuid4().hex


def interaction_kind(value: int) -> str:
    kind = INTERACTION_KINDS.get(value)  # type: ignore[call-overload]
    if kind is None:
        raise InvalidArgument(
            "type must be one of INTERACTION_TYPE_VIEW, _CLICK, _ADD_TO_CART, _PURCHASE"
        )
    return kind


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, core: RecommenderCore) -> None:
        self._core = core

    async def _call(self, context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]],
                    to_pb: Callable[[T, str], M]) -> M:
        """Run one core call; the only place that turns errors into status codes."""
        rid = request_id_of(context)
        request_id_var.set(rid)
        context.set_trailing_metadata(((REQUEST_ID_HEADER, rid),))
        try:
            result = await call()
        except VisrecError as e:
            code, message = status_for(e)
            log.info("request refused: %s", message, extra={"code": code.name})
            await context.abort(code, message)
        except Exception:
            log.exception("unexpected error")
            code, message = status_for(Exception())
            await context.abort(code, message)
        return to_pb(result, rid)

    async def _answer(self, context: grpc.aio.ServicerContext,
                      call: Callable[[], Awaitable[Recommendations]]) -> pb.Recommendations:
        return await self._call(context, call, lambda r, rid: recommendations_to_pb(
            dataclasses.replace(r, request_id=rid)))

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.Recommendations:
        override = _metadata(context, ARM_OVERRIDE_HEADER)
        return await self._answer(context, lambda: self._core.personaliser.recommend(
            request.user_id, request.k, conditions_from_pb(request.filter),
            request.exclude_seen, override))

    async def RecordInteraction(
        self, request: pb.RecordInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordInteractionResponse:
        override = _metadata(context, ARM_OVERRIDE_HEADER)
        return await self._call(
            context,
            lambda: self._core.interactions.record(
                request.user_id, request.item_id, interaction_kind(request.type),
                request.request_id, override),
            lambda r, rid: pb.RecordInteractionResponse(experiment=r.experiment, arm=r.arm,
                                                        counted=r.counted))

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.Recommendations:
        return await self._answer(context, lambda: self._core.search.similar_items(
            request.item_id, request.k, conditions_from_pb(request.filter)))

    async def SearchByImage(
        self, request: pb.SearchByImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.Recommendations:
        return await self._answer(context, lambda: self._core.search.search_by_image(
            request.image, request.k, conditions_from_pb(request.filter)))

    async def UpsertItems(self, request_iterator: AsyncIterator[pb.UpsertItemsRequest],
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        async def call() -> UpsertResult:
            return await self._core.catalog.upsert(
                await read_upserts(request_iterator, self._core.limits))

        return await self._call(context, call, lambda r, rid: pb.UpsertItemsResponse(
            upserted=r.upserted, model_version=r.model_version))

    async def DeleteItems(self, request: pb.DeleteItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.DeleteItemsResponse:
        return await self._call(context, lambda: self._core.catalog.delete(list(request.item_ids)),
                                lambda n, rid: pb.DeleteItemsResponse(deleted=n))


def attributes_from_pb(n: int, item_id: str, attributes: Struct) -> dict[str, AttributeValue]:
    out: dict[str, AttributeValue] = {}
    for key, value in attributes.fields.items():
        kind = value.WhichOneof("kind")
        if kind == "string_value":
            out[key] = value.string_value
        elif kind == "number_value":
            out[key] = value.number_value
        else:
            raise InvalidArgument(f"item #{n} ({item_id!r}): attribute {key!r} must be a string "
                                  f"or a number, not {kind or 'unset'}")
    return out


async def read_upserts(requests: AsyncIterator[pb.UpsertItemsRequest],
                       limits: Limits) -> list[ItemUpsert]:
    """The whole stream, refused as soon as it holds more items or image bytes than the
    limits (so a caller cannot make the gateway buffer without bound)."""
    out: list[ItemUpsert] = []
    size = 0
    async for request in requests:
        n = len(out)
        if n >= limits.max_batch_items:
            raise InvalidArgument(f"at most {limits.max_batch_items} items per stream; send "
                                  "the rest in another UpsertItems call")
        size += len(request.image)
        if size > limits.max_upsert_bytes:
            raise InvalidArgument(f"the stream's images exceed {limits.max_upsert_bytes} bytes "
                                  f"at item #{n}; send the rest in another UpsertItems call")
        it = request.item
        if not request.HasField("item"):
            raise InvalidArgument(f"item #{n} has no item")
        out.append(ItemUpsert(Item(it.id, it.name, it.category, it.subcategory, it.image_uri,
                                   attributes_from_pb(n, it.id, it.attributes)),
                              request.image))
    return out
