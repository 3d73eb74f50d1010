"""The gRPC servicer only translates: protobuf in -> one core call -> protobuf out.

Errors are mapped to status codes in one table (gateway.errors) and aborted in one place here.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import uuid
from collections.abc import Awaitable, Callable

import grpc

from gateway._pb.visrec.v1 import recommender_pb2 as pb
from gateway._pb.visrec.v1 import recommender_pb2_grpc as pb_grpc
from gateway.domain import AnyOf, Condition, Equals, Range, Recommendations
from gateway.errors import InvalidArgument, VisrecError, status_for
from gateway.logs import request_id_var
from gateway.recommender import RecommenderCore

log = logging.getLogger(__name__)
REQUEST_ID_HEADER = "x-request-id"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


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


def request_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-request-id when it is a sane token, else a fresh one."""
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and _SAFE_REQUEST_ID.match(value):
            return value
    return uuid.uuid4().hex


class RecommenderServicer(pb_grpc.RecommenderServicer):
    def __init__(self, core: RecommenderCore) -> None:
        self._core = core

    async def _answer(
        self,
        context: grpc.aio.ServicerContext,
        call: Callable[[], Awaitable[Recommendations]],
    ) -> pb.Recommendations:
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
        return recommendations_to_pb(dataclasses.replace(result, request_id=rid))

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
