"""`ANY /proxy/{client}/{path}`: a Paysera API call made with the client's token and a permit."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import unquote

from fastapi import APIRouter, Path, Request
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse

from app.api.deps import CallerDep, ServicesDep
from app.errors import InvalidRequest
from app.upstream.proxy import (
    SpooledBody,
    checked_path,
    forwarded_request_headers,
    forwarded_response_headers,
)

router = APIRouter(tags=["proxy"])

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def raw_subpath(request: Request, client: str) -> str:
    """The path after `/proxy/{client}/` exactly as sent (percent-encoding intact)."""
    raw = request.scope.get("raw_path", b"").decode("latin-1")
    _, _, rest = raw.partition("/proxy/")
    raw_client, _, sub = rest.partition("/")
    if unquote(raw_client) != client:
        raise InvalidRequest("malformed proxy path")
    return checked_path(sub)


async def proxy(
    request: Request,
    client: str,
    path: Annotated[str, Path(description="the upstream path below api_base_url")],
    caller: CallerDep,
    services: ServicesDep,
) -> StreamingResponse:
    """Forward the call to `api_base_url/path`; the upstream's answer streams back."""
    del path  # declared for the OpenAPI document; the raw (still encoded) path is forwarded
    name = services.auth.authorize(caller, client)
    request.state.client = name  # for the access log
    subpath = raw_subpath(request, client)
    body = await SpooledBody.read(request.stream(), services.settings.proxy.max_body_bytes)
    try:
        upstream = await services.proxy.forward(
            name,
            request.method,
            subpath,
            request.scope.get("query_string", b"").decode("latin-1"),
            forwarded_request_headers(request.headers.items()),
            body,
            caller=caller.name,
        )
    except BaseException:
        body.close()
        raise

    async def close() -> None:
        await upstream.aclose()
        body.close()

    response = StreamingResponse(
        upstream.aiter_raw(), status_code=upstream.status_code, background=BackgroundTask(close)
    )
    response.raw_headers = [
        (header.encode("latin-1"), value.encode("latin-1"))
        for header, value in forwarded_response_headers(upstream.headers)
    ]
    return response


for _method in METHODS:  # one route per method: each gets its own, stable operationId
    router.add_api_route(
        "/proxy/{client}/{path:path}",
        proxy,
        methods=[_method],
        operation_id=f"proxy_{_method.lower()}",
        summary=f"Proxy a {_method} call",
    )
