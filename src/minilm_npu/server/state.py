"""What every route needs, kept on ``app.state.server``."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from ..contract import Encoder
from .batcher import Batcher
from .metrics import ServerMetrics
from .settings import ServerSettings


@dataclass
class ServerState:
    """The encoder, the limits, the batcher and the metrics of one app."""

    encoder: Encoder
    settings: ServerSettings
    batcher: Batcher
    metrics: ServerMetrics

    @property
    def model_name(self) -> str:
        """The name reported to clients: ``--served-model-name`` or the model's own."""
        return self.settings.served_model_name or str(self.encoder.model_name)


def get_state(request: Request) -> ServerState:
    """The app's :class:`ServerState`."""
    return request.app.state.server
