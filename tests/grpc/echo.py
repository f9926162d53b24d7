"""A gRPC application for Vigil's end-to-end tests, written with grpcio's generic
handlers (raw bytes, so no generated code and no protoc): `serve PORT [NAME]` runs the
server (its answers name it in the `x-echo-server` trailer), `call ADDRESS AUTHORITY`
makes every kind of call through a proxy and prints one JSON line per call for the test
to check, and `count ADDRESS AUTHORITY METHOD N` makes N calls of METHOD (Unary or
ServerStream) and prints how many each server answered.

Methods of service vigil.test.Echo:
  Unary          echoes the request, prefixed with the caller identity the proxy vouched for
  ServerStream   answers "<request>-<i>" for i in 0..4
  Bidi           echoes each message as it arrives
  Fail           aborts with NOT_FOUND and a message
  Slow           sleeps 3 s before answering (the caller's deadline is shorter)
  Forbidden      never reached: the test's policy denies it at the server proxy
"""
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "vigil.test.Echo"
NAME = "server"


def peer_identity(context):
    for key, value in context.invocation_metadata():
        if key == "x-vigil-peer-identity":
            return value
    return "none"


def unary(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "kept"), ("x-echo-server", NAME)))
    return peer_identity(context).encode() + b" " + request


def server_stream(request, context):
    context.set_trailing_metadata((("x-echo-server", NAME),))
    for i in range(5):
        yield request + b"-" + str(i).encode()


def bidi(requests, context):
    for message in requests:
        yield b"echo:" + message


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def slow(request, context):
    time.sleep(3)
    return request


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("serving", flush=True)
    server.wait_for_termination()


def report(call, **fields):
    print(json.dumps({"call": call, **fields}), flush=True)


def call(address, authority):
    channel = grpc.insecure_channel(address, options=[("grpc.default_authority", authority)])
    grpc.channel_ready_future(channel).result(timeout=10)
    method = lambda kind, name: getattr(channel, kind)(f"/{SERVICE}/{name}")

    response, call_info = method("unary_unary", "Unary").with_call(b"hello", timeout=10)
    trailers = dict(call_info.trailing_metadata() or ())
    report("unary", response=response.decode(), trailer=trailers.get("x-echo-trailer", ""))

    stream = method("unary_stream", "ServerStream")(b"tick", timeout=10)
    report("server_stream", responses=[m.decode() for m in stream])

    bidi_call = method("stream_stream", "Bidi")(iter([b"a", b"b", b"c"]), timeout=10)
    report("bidi", responses=[m.decode() for m in bidi_call])

    for name, timeout in (("Fail", 10), ("Slow", 0.5), ("Forbidden", 10)):
        try:
            method("unary_unary", name)(b"x", timeout=timeout)
            report(name.lower(), code="OK")
        except grpc.RpcError as e:
            report(name.lower(), code=e.code().name, details=e.details() or "")


def count(address, authority, name, n):
    channel = grpc.insecure_channel(address, options=[("grpc.default_authority", authority)])
    grpc.channel_ready_future(channel).result(timeout=10)
    servers, errors = {}, []
    for _ in range(n):
        try:
            if name == "ServerStream":
                stream = channel.unary_stream(f"/{SERVICE}/{name}")(b"tick", timeout=10)
                list(stream)
                trailers = dict(stream.trailing_metadata() or ())
            else:
                _, info = channel.unary_unary(f"/{SERVICE}/{name}").with_call(b"n", timeout=10)
                trailers = dict(info.trailing_metadata() or ())
            server = trailers.get("x-echo-server", "?")
            servers[server] = servers.get(server, 0) + 1
        except grpc.RpcError as e:
            errors.append(f"{e.code().name}: {e.details()}")
    print(json.dumps({"servers": servers, "errors": errors}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        if len(sys.argv) > 3:
            NAME = sys.argv[3]
        serve(int(sys.argv[2]))
    elif sys.argv[1] == "count":
        count(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
    else:
        call(sys.argv[2], sys.argv[3])
