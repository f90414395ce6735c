"""A plaintext gRPC upstream that reflects what reached it, for byte-level relay checks.

Any method: the response is JSON of the request metadata, the request bytes (hex) and the
remaining deadline; it sends initial metadata `x-echo-initial` and trailing `x-echo-trailer`
(plus a binary trailer). A request header `x-echo-fail: CODE` makes it fail with that code,
the details `echo failure`, and a `grpc-status-details-bin` trailer of fixed bytes.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import grpc
import grpc.aio

from tests.e2e.rig import LOOPBACK, free_port

STATUS_DETAILS = b"\x08\x05\x12\x0cecho failure"  # google.rpc.Status{code: 5, message}
BIN_TRAILER = bytes(range(256))


class _Echo(grpc.GenericRpcHandler):
    def service(self, details: Any) -> grpc.RpcMethodHandler:
        method = details.method

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if method == "/grpc.health.v1.Health/Check":
                return b"\x08\x01"  # SERVING, so the proxy's readiness passes
            md = [
                (k, v.hex() if isinstance(v, bytes) else v)
                for k, v in context.invocation_metadata() or ()
            ]
            fail = dict(md).get("x-echo-fail")
            if fail:
                await context.abort(
                    grpc.StatusCode[fail],
                    "echo failure",
                    (("grpc-status-details-bin", STATUS_DETAILS), ("x-echo-trailer", "failed")),
                )
            delay = dict(md).get("x-echo-sleep")
            if delay:
                await asyncio.sleep(float(delay))
            await context.send_initial_metadata((("x-echo-initial", "hello"),))
            context.set_trailing_metadata(
                (("x-echo-trailer", "bye"), ("x-echo-trailer-bin", BIN_TRAILER))
            )
            remaining = context.time_remaining()
            return json.dumps(
                {
                    "method": method,
                    "metadata": md,
                    "request": request.hex(),
                    "time_remaining": remaining,
                    "peer": context.peer(),
                }
            ).encode()

        return grpc.unary_unary_rpc_method_handler(handle)


class EchoUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("echo upstream did not start")

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            # A burst through the proxy must not be dropped here, in the stand-in for Temporal.
            server = grpc.aio.server(
                options=[
                    ("grpc.server.max_pending_requests", 50_000),
                    ("grpc.server.max_pending_requests_hard_limit", 100_000),
                ]
            )
            server.add_generic_rpc_handlers((_Echo(),))
            server.add_insecure_port(f"{LOOPBACK}:{self.port}")
            await server.start()
            self._ready.set()
            await self._stop.wait()
            await server.stop(0)

        asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
