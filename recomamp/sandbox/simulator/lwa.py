"""The Login with Amazon half of the sandbox's simulator: the refresh grant and its errors by code; the
consent page (/ap/oa) and the authorization-code grant (single-use codes that expire, an exact redirect_uri
from the allowed list, PKCE S256). The AMC half asks it whose access token a call carries.

Its `/_sandbox/*` routes, each a POST of a JSON body (answered with JSON):
- `/_sandbox/consent` {"email": E, "decision": "approve"|"deny"}: who is signed in at "amazon.com" and what
  they answer on the consent page. Until it is set, the page answers access_denied, as Amazon does for a
  person who declines; `recomamp users authorize` then says so.
- `/_sandbox/revoke` {"email": E}: the user revokes consent; their refresh token stops working.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

from aiohttp import web

from recomamp.sandbox.simulator.faults import Fault, FaultScript, json_response, play


@dataclass
class _AuthCode:
    email: str
    redirect_uri: str
    code_challenge: str | None
    expires: float
    used: bool = False


class LwaSimulator:
    def __init__(
        self,
        faults: FaultScript,
        *,
        client_id: str,
        client_secret: str,
        access_token_ttl_seconds: int,
        rotate_refresh_tokens: bool,
        return_refresh_token: bool,
        expires_in_as_string: bool,
        code_ttl_seconds: float,
        allowed_return_urls: tuple[str, ...],
    ) -> None:
        self.faults = faults
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_token_ttl_seconds = access_token_ttl_seconds
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.return_refresh_token = return_refresh_token  # LWA may leave it out of a refresh answer
        self.expires_in_as_string = expires_in_as_string  # one Amazon doc shows "3600"
        self.code_ttl_seconds = code_ttl_seconds
        self.allowed_return_urls = list(allowed_return_urls)
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> user email, while it is valid
        self._issued_to: dict[str, str] = {}  # every refresh token ever issued -> email, to count calls
        self.access_tokens: dict[str, tuple[str, float]] = {}  # access token -> (email, expires, monotonic)
        self.codes: dict[str, _AuthCode] = {}
        self.consent_user: str | None = None  # who is signed in at amazon.com in "the browser"
        self.consent_decision: Literal["approve", "deny"] = "approve"

    # --- scripting, from Python ----------------------------------------------------------------------

    def add_user(self, email: str, refresh_token: str | None = None) -> str:
        token = refresh_token or f"Atzr|sim-{secrets.token_urlsafe(48)}"
        self.refresh_tokens[token] = email
        self._issued_to[token] = email
        return token

    def revoke(self, email: str) -> None:
        """The user revoked recomamp's access at Amazon: their refresh and access tokens stop working."""
        self.refresh_tokens = {t: e for t, e in self.refresh_tokens.items() if e != email}
        self.access_tokens = {t: v for t, v in self.access_tokens.items() if v[0] != email}

    def expire_access_tokens(self, email: str | None = None) -> None:
        self.access_tokens = {t: v for t, v in self.access_tokens.items() if email is not None and v[0] != email}

    def holder(self, access_token: str) -> str | None:
        """The user whose access token this is, while it has not expired."""
        entry = self.access_tokens.get(access_token)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    # --- serving -------------------------------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        app.router.add_post("/auth/o2/token", self._token)
        app.router.add_get("/ap/oa", self._consent)
        app.router.add_post("/_sandbox/revoke", self._admin_revoke)
        app.router.add_post("/_sandbox/consent", self._admin_consent)

    def _issue(self, email: str, body: dict[str, Any]) -> web.Response:
        access = f"Atza|sim-{secrets.token_urlsafe(300)}"
        self.access_tokens[access] = (email, time.monotonic() + self.access_token_ttl_seconds)
        ttl: int | str = (
            str(self.access_token_ttl_seconds) if self.expires_in_as_string else self.access_token_ttl_seconds
        )
        return json_response({"access_token": access, "token_type": "bearer", "expires_in": ttl, **body}, 200)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        refresh_token = str(form.get("refresh_token", ""))
        code = str(form.get("code", ""))
        caller = self._issued_to.get(refresh_token) or (self.codes[code].email if code in self.codes else None)
        self.faults.count("lwa_token", caller, None, request)
        fault = self.faults.take("lwa_token", caller, None)
        if fault is not None and (fault.status is not None or fault.hang_seconds or fault.drop):
            return await play(request, fault)
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return json_response({"error": "invalid_client", "error_description": "Client authentication failed"}, 401)
        if grant_type == "authorization_code":
            return self._exchange_code(form)
        if grant_type != "refresh_token":
            return json_response(
                {"error": "unsupported_grant_type", "error_description": f"Unsupported grant_type {grant_type!r}"}, 400
            )
        if not refresh_token:
            return json_response(
                {"error": "invalid_request", "error_description": "The request is missing a required parameter"},
                400,
            )
        user = self.refresh_tokens.get(refresh_token)
        if user is None:
            return await play(request, Fault.invalid_grant())
        body: dict[str, Any] = {}
        if self.rotate_refresh_tokens:
            del self.refresh_tokens[refresh_token]
            body["refresh_token"] = self.add_user(user)
        elif self.return_refresh_token:
            body["refresh_token"] = refresh_token
        return self._issue(user, body)

    def _exchange_code(self, form: Any) -> web.Response:
        code = str(form.get("code", ""))
        grant = self.codes.get(code)
        if not code or "redirect_uri" not in form:
            return json_response(
                {"error": "invalid_request", "error_description": "code and redirect_uri are required"}, 400
            )
        if grant is None or grant.used or time.monotonic() > grant.expires:
            if grant is not None:
                grant.used = True
            return json_response(
                {"error": "invalid_grant", "error_description": "The authorization code is invalid or has expired"}, 400
            )
        grant.used = True  # single use, even when the exchange fails below
        if str(form.get("redirect_uri")) != grant.redirect_uri:
            return json_response(
                {
                    "error": "invalid_grant",
                    "error_description": "redirect_uri does not match the authorization request",
                },
                400,
            )
        if grant.code_challenge is not None:
            verifier = str(form.get("code_verifier", ""))
            computed = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if not verifier or not hmac.compare_digest(computed, grant.code_challenge):
                return json_response(
                    {"error": "invalid_grant", "error_description": "code_verifier does not match the code_challenge"},
                    400,
                )
        return self._issue(grant.email, {"refresh_token": self.add_user(grant.email)})

    async def _consent(self, request: web.Request) -> web.StreamResponse:
        """amazon.com/ap/oa: the person signs in and approves (or not); Amazon redirects back."""
        query = request.query
        self.faults.count("consent", self.consent_user, None, request)
        fault = self.faults.take("consent", self.consent_user, None)
        if fault is not None:
            return await play(request, fault)
        redirect_uri = query.get("redirect_uri", "")
        if query.get("client_id") != self.client_id:
            return web.Response(status=400, text="An unknown client_id was given", content_type="text/plain")
        if redirect_uri not in self.allowed_return_urls:
            return web.Response(
                status=400,
                text=f"400 Bad Request: redirect URI {redirect_uri} has not been whitelisted",
                content_type="text/plain",
            )
        if query.get("response_type") != "code" or "advertising::campaign_management" not in query.get("scope", ""):
            return web.Response(status=400, text="response_type=code and the advertising scope are required")
        challenge = query.get("code_challenge")
        if challenge is not None and query.get("code_challenge_method") != "S256":
            return web.Response(status=400, text="code_challenge_method must be S256")
        state = query.get("state")
        params: dict[str, str] = {}
        if self.consent_decision == "deny" or self.consent_user is None:
            params = {"error": "access_denied", "error_description": "The user denied the request"}
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = _AuthCode(
                self.consent_user, redirect_uri, challenge, time.monotonic() + self.code_ttl_seconds
            )
            params = {"code": code, "scope": "advertising::campaign_management"}
        if state is not None:
            params["state"] = state
        raise web.HTTPFound(f"{redirect_uri}{'&' if '?' in redirect_uri else '?'}{urlencode(params)}")

    # --- scripting over HTTP, for `recomamp sandbox` ------------------------------------------------

    async def _admin_revoke(self, request: web.Request) -> web.StreamResponse:
        self.revoke((await request.json())["email"])
        return json_response({}, 200)

    async def _admin_consent(self, request: web.Request) -> web.StreamResponse:
        """Who is signed in at "amazon.com", and whether they approve (documented in the module docstring)."""
        body = await request.json()
        decision = body.get("decision", "approve")
        if not isinstance(body.get("email"), str) or decision not in ("approve", "deny"):
            return json_response({"error": 'give {"email": "…", "decision": "approve" or "deny"}'}, 400)
        self.consent_user = body["email"]
        self.consent_decision = decision
        return json_response({"email": self.consent_user, "decision": self.consent_decision}, 200)
