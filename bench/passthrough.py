"""The floor: a bare grpc.aio pass-through (generic handler, bytes in and out, no auth, no metrics).

It does only what any correct gRPC proxy must do and nothing the product adds: terminate mTLS,
forward request metadata minus hop-by-hop keys, propagate the deadline, relay the response
bytes, initial and trailing metadata and the status. Everything `proxy/` does per call on top
of this is what the benchmark prices.

    python bench/passthrough.py --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT \
        --cert server.pem --key server.key --client-ca ca.pem
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

_DROP = frozenset(
    {"user-agent", "te", "content-type", "content-length", "trailer", "connection", "host"}
    | {"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "grpc-message-type"}
)
_MAX = 128 * 1024 * 1024


class PassThrough(grpc.GenericRpcHandler):
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._relay(self._channel.unary_unary(method))
            )
        return handler

    @staticmethod
    def _relay(upstream: Any) -> Any:
        async def relay(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = [
                (k, v)
                for k, v in context.invocation_metadata() or ()
                if k not in _DROP and k[0] != ":"
            ]
            remaining = context.time_remaining()
            call = upstream(
                request,
                metadata=metadata,
                timeout=remaining if remaining is not None and remaining < 1e9 else None,
            )
            try:
                response: bytes = await call
            except grpc.aio.AioRpcError as exc:
                await context.abort(exc.code(), exc.details() or "", exc.trailing_metadata())
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(tuple(initial))
            trailing = await call.trailing_metadata()
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            return response

        return relay


async def serve(args: argparse.Namespace) -> None:
    # The same channel and server options as proxy/ (forward.channel_options, app.build_server),
    # copied rather than imported so the floor does not depend on the code it is the floor of.
    options = [
        ("grpc.max_send_message_length", _MAX),
        ("grpc.max_receive_message_length", _MAX),
        ("grpc.max_metadata_size", 64 * 1024),
    ]
    channel_options = [
        *options,
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 3_000),
    ]
    server_options = [
        *options,
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", 1000),
        ("grpc.http.overload_protection", 1),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    channel = grpc.aio.insecure_channel(args.upstream, options=channel_options)
    server = grpc.aio.server(options=server_options)
    server.add_generic_rpc_handlers((PassThrough(channel),))
    credentials = grpc.ssl_server_credentials(
        [(Path(args.key).read_bytes(), Path(args.cert).read_bytes())],
        root_certificates=Path(args.client_ca).read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(args.listen, credentials)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("listening", args.listen, flush=True)
    await stop.wait()
    await server.stop(1)
    await channel.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
