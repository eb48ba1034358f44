"""The demo page's login: an API key in, a same-site cookie holding a client secret out.

A browser cannot send an ``Authorization`` header when it loads a page, so once keys exist the
demo (``/demo``) asks for a key here, once: the key (it needs the ``realtime`` scope) buys a
client secret for ``edge.demo_login_ttl_s``, kept in an ``HttpOnly``, ``SameSite=Strict``
cookie scoped to ``/demo``. The edge accepts that cookie on the demo's paths only (its page,
its events, its uploads), and the demo's server side uses it as the bearer of the realtime
session it opens for the tab: the conversation is the key's, billed and limited as the key.
The key itself is never stored, logged or sent back.
"""

from __future__ import annotations

import asyncio
import html
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from server.edge import auth
from server.edge.policy import DEMO_LOGIN_PATH, DEMO_PATH
from server.state import state_of

router = APIRouter(include_in_schema=False)

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>voxline demo: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: sans-serif; max-width: 32rem; margin: 4rem auto">
<h1>voxline demo</h1>
<p>This server uses API keys. Paste a key with the <code>realtime</code> scope
(<code>voxline keys create NAME --scopes realtime</code>).</p>
{error}
<form method="post" action="{action}">
<input type="password" name="key" autocomplete="off" required style="width: 100%" id="key">
<p><button type="submit" id="login">Log in</button></p>
</form></body></html>
"""


def _page(request: Request, error: str = "", status: int = 200) -> HTMLResponse:
    action = html.escape(request.scope.get("root_path", "") + DEMO_LOGIN_PATH)
    shown = f'<p role="alert" style="color: #b00">{html.escape(error)}</p>' if error else ""
    return HTMLResponse(_PAGE.format(error=shown, action=action), status_code=status)


@router.get(DEMO_LOGIN_PATH)
async def login_page(request: Request) -> HTMLResponse:
    """The login form."""
    return _page(request)


@router.post(DEMO_LOGIN_PATH)
async def login(request: Request, key: Annotated[str, Form(max_length=256)]) -> Response:
    """Trade an API key for the demo's cookie, then go to the demo."""
    state = state_of(request)
    who = await asyncio.to_thread(auth.verify, state.store, key.strip())
    if who is None or who.via != "api_key" or not who.allows("realtime"):
        return _page(request, "That is not a live API key with the realtime scope.", 401)
    ttl = state.settings.edge.demo_login_ttl_s
    minted = await asyncio.to_thread(
        state.store.client_secrets.mint, who.key_id, ttl, scopes=["realtime"]
    )
    root = request.scope.get("root_path", "")
    response = RedirectResponse(root + DEMO_PATH + "/", status_code=303)
    response.set_cookie(
        auth.DEMO_COOKIE,
        minted.secret,
        max_age=ttl,
        path=root + DEMO_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
