"""The gRPC servicer only translates: protobuf in -> one core call -> protobuf out.

Errors are mapped to status codes in one table (visrec.gateway.api.status) and aborted in one
place here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from visrec.gateway._pb.visrec.v1 import recommender_pb2 as pb
from visrec.gateway._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from visrec.gateway.api.logs import request_id_var
from visrec.gateway.api.status import status_for
from visrec.gateway.core.domain import AnyOf, Condition, Equals, Range, Recommendations
from visrec.gateway.core.errors import InvalidArgument, VisrecError
from visrec.gateway.core.recommender import RecommenderCore

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
        return await self._answer(context, lambda: self._core.recommend(
            request.user_id, request.k, conditions_from_pb(request.filter),
            request.exclude_seen, override))

    async def RecordInteraction(
        self, request: pb.RecordInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecordInteractionResponse:
        override = _metadata(context, ARM_OVERRIDE_HEADER)
        return await self._call(
            context,
            lambda: self._core.record_interaction(
                request.user_id, request.item_id, interaction_kind(request.type),
                request.request_id, override),
            lambda r, rid: pb.RecordInteractionResponse(experiment=r.experiment, arm=r.arm,
                                                        counted=r.counted))

    async def SimilarItems(
        self, request: pb.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ) -> pb.Recommendations:
        return await self._answer(context, lambda: self._core.similar_items(
            request.item_id, request.k, conditions_from_pb(request.filter)))

    async def SearchByImage(
        self, request: pb.SearchByImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.Recommendations:
        return await self._answer(context, lambda: self._core.search_by_image(
            request.image, request.k, conditions_from_pb(request.filter)))

    # Declared in the API for online catalog changes, not served yet: the generated base class
    # raises NotImplementedError, which reaches the caller as UNKNOWN (found by fuzzing).
    async def UpsertItems(self, request_iterator: Any,
                          context: grpc.aio.ServicerContext) -> pb.UpsertItemsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNSERVED_CATALOG_CHANGES)
        raise AssertionError("unreachable")

    async def DeleteItems(self, request: pb.DeleteItemsRequest,
                          context: grpc.aio.ServicerContext) -> pb.DeleteItemsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, UNSERVED_CATALOG_CHANGES)
        raise AssertionError("unreachable")


UNSERVED_CATALOG_CHANGES = ("online catalog changes are not served yet: change the catalog file "
                            "and run visrec-ingest")
