"""A WebSocket application for Vigil's end-to-end tests, with the `websockets` library:
`serve PORT` echoes every message back prefixed with the caller identity the proxy
vouched for (the handshake's x-vigil-peer-identity header); `call PROXY HOST PATH`
connects through a proxy's outbound port (an HTTP proxy in explicit mode: the TCP
connection goes to PROXY, the handshake names HOST), sends three messages and prints
one JSON line with what came back, or the handshake's refusal status.
"""
import asyncio
import json
import socket
import sys

import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import serve as ws_serve


async def echo(ws):
    who = ws.request.headers.get("x-vigil-peer-identity", "none")
    async for message in ws:
        await ws.send(f"{who} {ws.request.path} {message}")


async def serve(port):
    async with ws_serve(echo, "127.0.0.1", port):
        print("serving", flush=True)
        await asyncio.Future()


async def call(proxy, host, path):
    ip, port = proxy.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=10)
    try:
        async with connect(f"ws://{host}{path}", sock=sock, open_timeout=10) as ws:
            replies = []
            for message in ("one", "two", "three"):
                await ws.send(message)
                replies.append(await asyncio.wait_for(ws.recv(), 10))
            print(json.dumps({"replies": replies}), flush=True)
    except websockets.exceptions.InvalidStatus as e:
        print(json.dumps({"refused": e.response.status_code}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        asyncio.run(call(sys.argv[2], sys.argv[3], sys.argv[4]))
