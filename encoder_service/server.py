"""The Encoder gRPC servicer (grpc.aio): thin, proto <-> Encoder."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import CollectorRegistry

from encoder_service.encoder import Encoder
from encoder_service.metrics import EncoderMetrics
from protos.encoder_codec import MODALITY_NAMES, info_to_pb, item_from_pb, result_to_pb
from protos.errors import InvalidRequest, Unavailable
from protos.meshserve.v1 import encoder_pb2, encoder_pb2_grpc

SERVICE_NAME = encoder_pb2.DESCRIPTOR.services_by_name["Encoder"].full_name


class EncoderServicer(encoder_pb2_grpc.EncoderServicer):
    """Registered before the tower loads (so health answers early); `attach` makes it live."""

    def __init__(
        self,
        modality: str,
        encoder: Encoder | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.modality = modality
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = EncoderMetrics(self.registry, modality)
        self._encoder: Encoder | None = None
        if encoder is not None:
            self.attach(encoder)

    def attach(self, encoder: Encoder) -> None:
        self.metrics.attach(encoder)
        self._encoder = encoder

    def close(self) -> None:
        """Stops the attached encoder's micro-batcher (after the server drained)."""
        if self._encoder is not None:
            self._encoder.close()

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            raise Unavailable(f"the {self.modality} encoder is still loading; retry when SERVING")
        return self._encoder

    async def Encode(
        self, request: encoder_pb2.EncodeRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncodeResponse:
        modality = MODALITY_NAMES.get(request.modality)
        if modality != self.modality:
            raise InvalidRequest(
                f"this encoder serves {self.modality}, not {modality or 'an unset modality'}"
            )
        items = [item_from_pb(i, item) for i, item in enumerate(request.items)]
        encoder = self.encoder
        # NOTE: blocking (decode, tower); in a thread, concurrent calls meet in the batcher
        with encoder.admit(len(items)), self.metrics.time_request():
            results = await asyncio.to_thread(encoder.encode, items)
        return encoder_pb2.EncodeResponse(items=[result_to_pb(r) for r in results])

    async def GetInfo(
        self, request: encoder_pb2.GetEncoderInfoRequest, context: grpc.aio.ServicerContext
    ) -> encoder_pb2.EncoderInfo:
        return info_to_pb(self.encoder.info())
