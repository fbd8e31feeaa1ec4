"""What every route needs, kept on ``app.state.server``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ..contract import Encoder
from .batcher import Batcher
from .metrics import ServerMetrics
from .settings import ServerSettings
from .validation import Edge

if TYPE_CHECKING:
    from .handlers import Task, TokenEmbedder


@dataclass
class ServerState:
    """The encoder, the limits, the batcher, the metrics of one app, and what ``POST /`` may do."""

    encoder: Encoder
    settings: ServerSettings
    batcher: Batcher
    metrics: ServerMetrics
    edge: Edge
    tokens: TokenEmbedder
    tasks: tuple[Task, ...] = ()

    @property
    def model_name(self) -> str:
        """The name reported to clients: ``--served-model-name`` or the model's own."""
        return self.settings.served_model_name or str(self.encoder.model_name)

    def model_card(self) -> dict[str, Any]:
        """The served model as OpenAI's model object."""
        return {"id": self.model_name, "object": "model", "created": 0, "owned_by": "minilm-npu"}


def get_state(request: Request) -> ServerState:
    """The app's :class:`ServerState`."""
    return request.app.state.server
