"""Which credential each route needs, and what a request to it counts against.

One table, read by the edge for every HTTP request and WebSocket handshake, so that what a key
may do is written down in one place (README, "Security", shows it):

| route | scope | counted (rpm) | quotas checked |
|---|---|---|---|
| ``/healthz``, ``/readyz``, ``/docs``, ``/openapi.json`` | open | no | no |
| ``/v1/realtime`` (WebSocket; also a client secret) | ``realtime`` | yes | yes |
| ``POST /v1/realtime/client_secrets`` (an API key, never a secret) | ``realtime`` | yes | no |
| ``/v1/audio/transcriptions``, ``/v1/audio/speech`` | ``audio`` | yes | yes |
| ``POST /v1/audio/voices`` (a reference clip), ``/v1/audio/voices/{id}`` | ``audio`` | yes | no |
| ``/v1/turns`` (audio in, audio out: a voice turn) | ``audio`` | yes | yes |
| ``POST /v1/jobs`` (transcription, speech, a batch of turns) | ``audio`` | yes | yes |
| ``/v1/jobs``, ``/v1/jobs/{id}...`` (read, cancel, delete: the owner's) | any key | yes | no |
| ``/v1/chat/completions`` | ``chat`` | yes | yes |
| ``GET /v1/audio/voices`` | any key, or a client secret | yes | no |
| ``/v1/models``, any other ``/v1`` path | any key | yes | no |
| ``/v1/usage`` | ``admin`` | yes | no |
| ``/metrics`` (or loopback, with ``edge.metrics_from_loopback``) | ``admin`` | no | no |
| ``/demo/login`` | open | no | no |
| ``/demo/...`` (the page; also its login cookie) | ``realtime`` | uploads only | no |

A job does the work of the route its kind stands for (``JOB_KIND_ROUTES``), so submitting one
needs that route's scope and is refused once a quota is spent, as the route is; the scope is
checked here, before the form (and its ``kind``) is read, which works because every kind's route
needs the same scope (a test keeps them equal). The route then checks the quota again with the
upload's decoded seconds (``server.edge.quotas.require_quota``).

A scope a route does not name (``None``) accepts any valid API key. A client secret (handed to
a browser) is accepted only where the scope is ``realtime`` (the realtime WebSocket and the
demo) and on ``GET /v1/audio/voices`` (the voice choices). The demo's own requests (assets,
events) are not counted: its conversations are, as the realtime sessions they open.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Scope = Literal["realtime", "audio", "chat", "admin"]
SCOPES: tuple[Scope, ...] = ("realtime", "audio", "chat", "admin")
"""Every scope a key can have (``voxline keys create --scopes``)."""

DEMO_PATH = "/demo"
VOICES_PATH = "/v1/audio/voices"
JOBS_PATH = "/v1/jobs"
DEMO_LOGIN_PATH = "/demo/login"


@dataclass(frozen=True, slots=True)
class Rule:
    """What the edge asks of a request to one route."""

    open: bool = False
    """No credential needed (probes, the API's documentation, the demo's login page)."""
    scope: Scope | None = None
    """The scope needed (``None``: any valid API key)."""
    counted: bool = True
    """Counted against the key's requests per minute."""
    spends: bool = False
    """Does engine work: refused when one of the key's quotas is spent."""
    keys_only: bool = False
    """A client secret is not enough (minting one)."""
    cookie: bool = False
    """The demo's login cookie is accepted as the credential."""
    upload: bool = False
    """Takes an audio upload: the body may be ``audio.max_bytes`` (else ``edge.max_json_bytes``)."""
    secrets: bool = False
    """A client secret is accepted as well (besides the ``realtime`` routes): what a browser
    holding one needs to set up its session, such as the voice choices."""


_OPEN = Rule(open=True, counted=False)
_EXACT: dict[str, Rule] = {
    "/healthz": _OPEN,
    "/readyz": _OPEN,
    "/docs": _OPEN,
    "/docs/oauth2-redirect": _OPEN,
    "/redoc": _OPEN,
    "/openapi.json": _OPEN,
    "/metrics": Rule(scope="admin", counted=False),
    "/v1/usage": Rule(scope="admin"),
    "/v1/realtime": Rule(scope="realtime", spends=True),
    "/v1/realtime/client_secrets": Rule(scope="realtime", keys_only=True),
    "/v1/audio/transcriptions": Rule(scope="audio", spends=True, upload=True),
    "/v1/audio/speech": Rule(scope="audio", spends=True),
    "/v1/turns": Rule(scope="audio", spends=True, upload=True),
    "/v1/chat/completions": Rule(scope="chat", spends=True),
    DEMO_LOGIN_PATH: Rule(open=True, counted=False),
}
# by method where one path serves several: listing voices needs any key, adding one the scope
_BY_METHOD: dict[tuple[str, str], Rule] = {
    ("POST", VOICES_PATH): Rule(scope="audio", upload=True),
    ("GET", VOICES_PATH): Rule(secrets=True),  # the demo's voice box, from the browser's secret
    # every kind of job is audio work (see JOB_KIND_ROUTES): a chat-only key submits none
    ("POST", JOBS_PATH): Rule(scope="audio", spends=True, upload=True),
}
JOB_KIND_ROUTES: dict[str, str] = {
    "transcription": "/v1/audio/transcriptions",
    "speech": "/v1/audio/speech",
    "turns": "/v1/turns",
}
"""The route whose work each kind of job does (its scope and quotas are the job's)."""
_VOICE = Rule(scope="audio")  # one stored voice: read or delete it
_DEMO = Rule(scope="realtime", counted=False, cookie=True, upload=True)
_DEMO_UPLOAD = Rule(scope="realtime", cookie=True, upload=True)
_API = Rule()


def rule_for(path: str, method: str = "GET") -> Rule:
    """The rule of ``method`` on the route at ``path`` (paths outside ``/v1`` and the demo are
    open: they are 404s, and the answer must not depend on a key). WebSocket handshakes are
    ``GET``."""
    path = path.rstrip("/") or "/"
    rule = _BY_METHOD.get((method.upper(), path)) or _EXACT.get(path)
    if rule is not None:
        return rule
    if path.startswith(VOICES_PATH + "/"):
        return _VOICE
    if path == DEMO_PATH or path.startswith(DEMO_PATH + "/"):
        return _DEMO_UPLOAD if path.endswith("/gradio_api/upload") else _DEMO
    if path == "/v1" or path.startswith("/v1/"):
        return _API
    return _OPEN
