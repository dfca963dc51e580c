"""An MCP client that signs in through the sidecar (``AUTHZ_SIGNIN=true make run``), as ChatGPT or
Claude would: the official SDK's ``OAuthClientProvider`` discovers the authorization server from
the 401, registers (DCR), sends you to sign in (a browser opens, or open the printed URL), takes
the code on a loopback redirect URI, and then lists tools and calls ``whoami`` as you.

    python -m authz.dev.signin_client [--url http://localhost:10000/mcp] [--port 8765]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import webbrowser
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web


class LoopbackCallback:
    """The redirect URI ``http://127.0.0.1:PORT/callback``: the first request to it is the answer."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.redirect_uri = f"http://127.0.0.1:{port}/callback"
        self.answer: asyncio.Future[dict[str, str]] | None = None
        self._runner: web.AppRunner | None = None

    async def _callback(self, request: web.Request) -> web.Response:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result(dict(request.query))
        return web.Response(text="Signed in: you can close this window.", content_type="text/plain")

    async def start(self) -> None:
        self.answer = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/callback", self._callback)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class MemoryTokens:
    """The SDK's TokenStorage, in memory (a real client keeps them on disk)."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client_info: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client_info

    async def set_client_info(self, client_info: Any) -> None:
        self.client_info = client_info


async def sign_in_and_call(url: str, port: int, open_url: Callable[[str], Any]) -> dict[str, Any]:
    from mcp.client.auth import OAuthClientProvider
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

    callback = LoopbackCallback(port)
    await callback.start()

    async def redirect_handler(authorization_url: str) -> None:
        print(f"Sign in here (a browser should open):\n  {authorization_url}\n", flush=True)
        await asyncio.to_thread(open_url, authorization_url)

    async def callback_handler() -> AuthorizationCodeResult:
        assert callback.answer is not None
        answer = await asyncio.wait_for(callback.answer, 600)
        if "code" not in answer:
            raise RuntimeError(f"sign-in refused: {answer.get('error')}: {answer.get('error_description')}")
        return AuthorizationCodeResult(code=answer["code"], state=answer.get("state"), iss=answer.get("iss"))

    from pydantic import AnyUrl

    metadata = OAuthClientMetadata(client_name="authz demo client", redirect_uris=[AnyUrl(callback.redirect_uri)],
                                   grant_types=["authorization_code", "refresh_token"])
    auth = OAuthClientProvider(server_url=url, client_metadata=metadata, storage=MemoryTokens(),
                               redirect_handler=redirect_handler, callback_handler=callback_handler)
    try:
        async with create_mcp_http_client(auth=auth) as http, streamable_http_client(url, http_client=http) as s:
            async with ClientSession(s[0], s[1]) as session:
                await session.initialize()
                tools = await session.list_tools()
                who = await session.call_tool("whoami", {})
    finally:
        await callback.stop()
    text = who.content[0].text if who.content and hasattr(who.content[0], "text") else "{}"
    return {"tools": sorted(t.name for t in tools.tools), "whoami": json.loads(text)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m authz.dev.signin_client", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://localhost:10000/mcp", help="the MCP server through Envoy")
    p.add_argument("--port", type=int, default=8765, help="the loopback redirect URI's port")
    args = p.parse_args(argv)
    result = asyncio.run(sign_in_and_call(args.url, args.port, webbrowser.open))
    print("tools you may call:", ", ".join(result["tools"]))
    print("the MCP server sees:", json.dumps(result["whoami"].get("headers", {}), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
