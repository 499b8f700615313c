"""`planctl serve`: the HTTP gateway. Imported only by `serve` (it pulls in Starlette, uvicorn
and the upstream client), never by other commands."""
