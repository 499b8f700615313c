"""A fake OpenAI upstream for the gateway's tests and benchmarks (no network beyond loopback).

It answers `POST …/responses` and `POST …/chat/completions`, streaming or not, the way the
OpenAI API does: Responses SSE (`response.created` … `response.output_text.delta` …
`response.output_item.done` → `response.completed` with usage, cached tokens included), Chat
SSE (deltas, `finish_reason`, the usage chunk when `stream_options.include_usage` is set,
`[DONE]`), and function calls when the request offers tools and has not answered one yet.

What it does is set on the object (tests run it in a thread and change it between requests):
`usage`, `deltas`, `delay` (seconds before the answer), `event_delay`, `fail` (statuses to answer
the next requests with, one each; `fail_error` is their error object), `break_after` (events
sent before the connection is cut), `key` (the secret it expects; another one gets 401),
`scripts` (Responses event lists, e.g. the recorded samples in tests/fixtures/anthropic/, to
answer the next requests with, one each: reasoning items with encrypted content, arguments only
in `function_call_arguments.done`, parallel calls, refusals, `response.failed`…; a whole answer
is the final event's response). It records each request in `requests`.

Plain asyncio with HTTP/1.1 keep-alive and TCP_NODELAY (a server that writes headers and
body separately stalls about 40 ms on delayed ACKs otherwise), so it is also the baseline
of benchmarks/gateway.py. Standalone: `python tests/helpers/fake_upstream.py --port 9100`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeUpstream:
    key: str | None = "sk-upstream-test"
    usage: tuple[int, int, int, int] = (2_000, 1_500, 300, 100)  # input, cached, output, reasoning
    deltas: int = 16
    text: str = "Hello from the fake upstream."
    delay: float = 0.0
    event_delay: float = 0.0
    fail: list[int] = field(default_factory=list)
    fail_error: dict[str, Any] | None = None
    scripts: list[list[dict[str, Any]]] = field(default_factory=list)
    break_after: int | None = None
    retry_after: str | None = None
    record: bool = True
    requests: list[Seen] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _open: set[Any] = field(default_factory=set, repr=False)

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    # ------------------------------------------------------------ running

    def start(self) -> FakeUpstream:
        """Serve in a background thread (its own event loop)."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def kill(self) -> None:
        """Die as a crashed server does: stop listening and cut every open connection."""
        if self._loop is None:
            return

        async def cut() -> None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()

        asyncio.run_coroutine_threadsafe(cut(), self._loop).result(10)
        self.stop()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------ HTTP/1.1

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                size = int(headers.get("content-length", "0"))
                raw = await reader.readexactly(size) if size else b""
                keep = await self._answer(method, path, headers, raw, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open.discard(writer)
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    async def _answer(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        if self.record:
            self.requests.append(Seen(path, headers, body))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.key is not None and headers.get("authorization") != f"Bearer {self.key}":
            return self._json(writer, 401, {"error": {"message": "Incorrect API key provided", "type":
                                                      "invalid_request_error", "code": "invalid_api_key"}})
        if self.fail:
            status = self.fail.pop(0)
            extra = {"Retry-After": self.retry_after} if self.retry_after else {}
            error = self.fail_error or {"message": f"fake upstream failure {status}", "type": "server_error",
                                        "code": None}
            return self._json(writer, status, {"error": error}, extra)
        if method != "POST" or not (path.endswith("/responses") or path.endswith("/chat/completions")):
            return self._json(writer, 404, {"error": {"message": "not found", "type": "invalid_request_error"}})
        chat = path.endswith("/chat/completions")
        if self.scripts and not chat:
            events: list[tuple[str | None, Any]] = [(e["type"], e) for e in self.scripts.pop(0)]
            if not body.get("stream"):
                return self._json(writer, 200, events[-1][1].get("response") or events[-1][1])
            return await self._stream(writer, events, chat)
        events = chat_events(self, body) if chat else responses_events(self, body)
        if not body.get("stream"):
            return self._json(writer, 200, chat_body(self, body) if chat else events[-1][1]["response"])
        return await self._stream(writer, events, chat)

    def _json(self, writer: asyncio.StreamWriter, status: int, payload: Any,
              extra: dict[str, str] | None = None) -> bool:
        data = json.dumps(payload).encode()
        more = "".join(f"{k}: {v}\r\n" for k, v in (extra or {}).items())
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
                     f"{more}\r\n".encode() + data)
        return True

    async def _stream(self, writer: asyncio.StreamWriter, events: list[tuple[str | None, Any]], chat: bool) -> bool:
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        for number, (name, payload) in enumerate(events):
            if self.break_after is not None and number >= self.break_after:
                if head:
                    writer.write(head)
                await writer.drain()
                writer.transport.abort()  # cut mid-stream: no terminating chunk
                return False
            data = (f"event: {name}\n" if name else "") + "data: " + (
                payload if isinstance(payload, str) else json.dumps(payload)) + "\n\n"
            chunk = f"{len(data.encode()):x}\r\n".encode() + data.encode() + b"\r\n"
            writer.write(head + chunk if head else chunk)
            head = b""
            if self.event_delay:
                await writer.drain()
                await asyncio.sleep(self.event_delay)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


# ---------------------------------------------------------------- the API's shapes


def _tool(body: dict[str, Any], chat: bool) -> str | None:
    """The function to call: the first tool offered, unless the request answers a call already."""
    tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
    if not tools:
        return None
    if chat:
        if any(m.get("role") == "tool" for m in body.get("messages") or []):
            return None
        return tools[0]["function"]["name"]
    items = body.get("input") if isinstance(body.get("input"), list) else []
    if any(isinstance(i, dict) and i.get("type") == "function_call_output" for i in items):
        return None
    return tools[0]["name"]


def responses_usage(up: FakeUpstream) -> dict[str, Any]:
    i, c, o, r = up.usage
    return {"input_tokens": i, "input_tokens_details": {"cached_tokens": c}, "output_tokens": o,
            "output_tokens_details": {"reasoning_tokens": r}, "total_tokens": i + o}


def responses_events(up: FakeUpstream, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    rid = f"resp_{int(time.time() * 1e6):x}"
    model = body.get("model", "")
    base = {"id": rid, "object": "response", "created_at": int(time.time()), "model": model,
            "status": "in_progress", "output": [], "usage": None}
    out: list[tuple[str, dict[str, Any]]] = []

    def ev(kind: str, **fields: Any) -> None:
        out.append((kind, {"type": kind, "sequence_number": len(out), **fields}))

    ev("response.created", response=base)
    ev("response.in_progress", response=base)
    tool = _tool(body, chat=False)
    if tool:
        args = '{"city": "Paris"}'
        item = {"id": "fc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": tool,
                "arguments": args}
        ev("response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"})
        for piece in (args[:8], args[8:]):
            ev("response.function_call_arguments.delta", item_id="fc_1", output_index=0, delta=piece)
        ev("response.function_call_arguments.done", item_id="fc_1", output_index=0, arguments=args)
        ev("response.output_item.done", output_index=0, item=item)
    else:
        n = up.deltas
        words = [up.text[k * len(up.text) // n:(k + 1) * len(up.text) // n] for k in range(n)]
        text = "".join(words)
        item = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}]}
        ev("response.output_item.added", output_index=0,
           item={**item, "status": "in_progress", "content": []})
        ev("response.content_part.added", item_id="msg_1", output_index=0, content_index=0,
           part={"type": "output_text", "text": "", "annotations": []})
        for word in words:
            ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=word)
        ev("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=text)
        ev("response.content_part.done", item_id="msg_1", output_index=0, content_index=0,
           part={"type": "output_text", "text": text, "annotations": []})
        ev("response.output_item.done", output_index=0, item=item)
    ev("response.completed", response={**base, "status": "completed", "output": [item], "usage": responses_usage(up)})
    return out


def chat_usage(up: FakeUpstream) -> dict[str, Any]:
    i, c, o, r = up.usage
    return {"prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o,
            "prompt_tokens_details": {"cached_tokens": c}, "completion_tokens_details": {"reasoning_tokens": r}}


def chat_body(up: FakeUpstream, body: dict[str, Any]) -> dict[str, Any]:
    tool = _tool(body, chat=True)
    message: dict[str, Any] = {"role": "assistant", "content": None if tool else up.text}
    if tool:
        message["tool_calls"] = [{"id": "call_1", "type": "function",
                                  "function": {"name": tool, "arguments": '{"city": "Paris"}'}}]
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body.get("model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool else "stop"}],
            "usage": chat_usage(up)}


def chat_events(up: FakeUpstream, body: dict[str, Any]) -> list[tuple[None, Any]]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": body.get("model")}
    with_usage = (body.get("stream_options") or {}).get("include_usage") is True
    extra = {"usage": None} if with_usage else {}
    out: list[tuple[None, Any]] = []

    def chunk(delta: dict[str, Any], finish: str | None = None) -> None:
        out.append((None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}))

    tool = _tool(body, chat=True)
    chunk({"role": "assistant", "content": ""})
    if tool:
        chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                               "function": {"name": tool, "arguments": ""}}]})
        for piece in ('{"city": ', '"Paris"}'):
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        chunk({}, "tool_calls")
    else:
        n = up.deltas
        for k in range(n):
            chunk({"content": up.text[k * len(up.text) // n:(k + 1) * len(up.text) // n]})
        chunk({}, "stop")
    if with_usage:
        out.append((None, {**base, "choices": [], "usage": chat_usage(up)}))
    out.append((None, "[DONE]"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake OpenAI upstream on loopback.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--deltas", type=int, default=16)
    parser.add_argument("--key", default="sk-upstream-test", help="expected upstream secret ('' = any)")
    args = parser.parse_args()
    up = FakeUpstream(key=args.key or None, deltas=args.deltas, host=args.host, port=args.port, record=False)

    async def serve() -> None:
        await up._start()
        print(f"fake upstream on {up.base_url}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
