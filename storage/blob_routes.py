"""The local folder's signed blob URLs, served by the app (docs/CONTRACT.md §3 "Blobs").

`PUT /blobs/{key}` streams exactly the signed number of bytes to disk; `GET` streams a
file back. No bearer token: the URL's HMAC signature and expiry are the credential
(docs/CONTRACT.md §2). Refusals use the error envelope: a bad or tampered signature or an expired
URL is `403 FORBIDDEN` (`details.reason` `signature` or `expired`), more bytes than
signed `413 PAYLOAD_TOO_LARGE`, a missing or short body `400 VALIDATION_ERROR`.
CORS headers come from the edge middleware, as for the API. Never logs a key or a URL.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from infra.errors import ApiError, validation
from storage.local import BLOB_PATH, LocalBlobStore, TooLittle, TooMuch, UrlRefused


def blob_routes(store: LocalBlobStore) -> list[Route]:
    def grant(request: Request, method: str) -> int | None:
        try:
            found = store.verify(method, request.path_params["key"], dict(request.query_params))
        except UrlRefused as exc:
            raise ApiError(
                "FORBIDDEN", "This blob URL is not valid.", {"reason": exc.reason}
            ) from None
        return found.length

    async def put(request: Request) -> Response:
        length = grant(request, "PUT")
        assert length is not None
        declared = request.headers.get("content-length")
        if declared is None or not declared.isdigit():
            raise validation("Content-Length", "must be sent, equal to the signed length")
        if int(declared) > length:
            raise ApiError("PAYLOAD_TOO_LARGE", "More bytes than signed.", {"limit": length})
        if int(declared) != length:
            raise validation("Content-Length", "must equal the signed length")
        try:
            await store.receive(request.path_params["key"], length, request.stream())
        except TooMuch:
            raise ApiError(
                "PAYLOAD_TOO_LARGE", "More bytes than signed.", {"limit": length}
            ) from None
        except (TooLittle, ClientDisconnect):
            raise validation("body", "ended before the signed length") from None
        return Response(status_code=200)

    async def get(request: Request) -> Response:
        grant(request, "GET")
        path = await store.file_for_download(request.path_params["key"])
        if path is None:
            raise ApiError("NOT_FOUND", "No such object.")
        return FileResponse(path, media_type="application/octet-stream")

    template = BLOB_PATH + "{key:path}"
    return [Route(template, put, methods=["PUT"]), Route(template, get, methods=["GET"])]
