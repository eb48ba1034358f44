"""``GET /metrics``: the Prometheus exposition of the app's ``Metrics``.

Text format by default, OpenMetrics when the scraper asks for it (``Accept``). It carries no
per-user label, only aggregate counts; still, once API keys exist the edge asks for a key with
the ``admin`` scope (or, with ``edge.metrics_from_loopback``, a loopback client):
``server/edge/policy.py``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from server.metrics import Metrics
from server.state import state_of

router = APIRouter()


def metrics_of(request: Request) -> Metrics:
    """The app's ``Metrics`` (``AppState.metrics``; a FastAPI dependency)."""
    metrics = getattr(state_of(request), "metrics", None)
    if not isinstance(metrics, Metrics):
        raise RuntimeError("this app has no Metrics: set AppState.metrics in create_app")
    return metrics


@router.get("/metrics", include_in_schema=False)
async def metrics_endpoint(
    request: Request, metrics: Annotated[Metrics, Depends(metrics_of)]
) -> Response:
    """Every metric, in the format the scraper accepts."""
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
