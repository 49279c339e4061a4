"""Who may use a server that other machines can reach: a token, or the users of a password file.

On a loopback address the server answers anyone on that machine, as it always did. Off loopback
(`--allow-remote` with another --host), and wherever a token or users are given, every route
under /v1 needs one of:

    Authorization: Bearer TOKEN              the server's token: --token, else $WBCNET_TOKEN, else (off
                                             loopback, with no --users) one made at start and printed
    Authorization: Basic base64(USER:PASS)   a user of --users FILE, whose lines are
                                             `USER:pbkdf2_sha256$ITERATIONS$SALT$HASH` (salt and hash in
                                             base64); `wbcnet serve --hash-password USER` prints one

/healthz, the page's own files, and /docs with the OpenAPI description stay open: they hold
nothing of a lab, and the page has to load to ask for the credential (once a browser tab: it keeps
it in sessionStorage). A request without a credential, or with a wrong one, gets 401 with
{"detail": "one line"} and a WWW-Authenticate challenge, before its body is read (Guard); the
routes also take the check as a FastAPI security dependency (HTTPBearer, HTTPBasic), so
/openapi.json declares the schemes and the 401.

Secrets are compared with hmac.compare_digest. A password is checked with PBKDF2-SHA256 (600,000
rounds, a few tenths of a second) once per user and password: a check that passed is remembered in
memory, under an HMAC keyed by this process, so the page's many requests cost nothing after its
first. Passwords are ASCII, as FastAPI's HTTPBasic reads them.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import getpass
import hashlib
import hmac
import os
import re
import secrets
import sys
import threading
from pathlib import Path

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse

from ..core.errors import WbcnetError

TOKEN_ENV = "WBCNET_TOKEN"
REALM = "wbcnet"
HASH = "pbkdf2_sha256"
ITERATIONS = 600_000          # OWASP's figure for PBKDF2-SHA256 (2023)
MIN_TOKEN, MIN_PASSWORD = 16, 8
USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
PROTECTED = "/v1"             # every route under it; the rest is the page, the docs and /healthz
_REMEMBERED = 1024            # passwords that passed, kept (then forgotten all at once)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise WbcnetError(f"a password needs {MIN_PASSWORD} characters or more")
    if not (password.isascii() and password.isprintable()):
        raise WbcnetError("a password must be printable ASCII (HTTP Basic, as browsers and FastAPI send it)")
    return password


def check_user(user: str) -> str:
    if not USER.fullmatch(user or ""):
        raise WbcnetError(f"user name {user!r}: use 1-64 letters, digits and . _ @ + -")
    return user


def hash_password(password: str, iterations: int = ITERATIONS, salt: bytes | None = None) -> str:
    """`pbkdf2_sha256$ITERATIONS$SALT$HASH`, salt and hash in base64."""
    check_password(password)
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    return f"{HASH}${iterations}${_b64(salt)}${_b64(digest)}"


def _parts(encoded: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, hash) of an encoded hash, or ValueError."""
    name, iterations, salt, digest = encoded.split("$")
    if name != HASH or not iterations.isdigit() or int(iterations) < 1:
        raise ValueError(encoded)
    try:
        return int(iterations), base64.b64decode(salt, validate=True), base64.b64decode(digest, validate=True)
    except binascii.Error:
        raise ValueError(encoded) from None


def verify_password(password: str, encoded: str) -> bool:
    iterations, salt, digest = _parts(encoded)
    got = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(got, digest)


def users_line(user: str, password: str, iterations: int = ITERATIONS) -> str:
    """One line of a --users file."""
    return f"{check_user(user)}:{hash_password(password, iterations)}"


def read_users(path) -> dict[str, str]:
    """user -> encoded hash from a --users file (`user:hash` lines; blank lines and # comments
    skipped), or a one-line WbcnetError naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise WbcnetError(f"--users {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    users: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, _, encoded = line.partition(":")
        try:
            check_user(user)
            _parts(encoded)
        except (WbcnetError, ValueError):
            raise WbcnetError(f"--users {path}, line {n}: not `user:{HASH}$...` (make lines with wbcnet serve "
                              f"--hash-password USER)") from None
        if user in users:
            raise WbcnetError(f"--users {path}, line {n}: user {user!r} is there twice")
        users[user] = encoded
    if not users:
        raise WbcnetError(f"--users {path}: no users in it (add lines with wbcnet serve --hash-password USER)")
    return users


def password_line(user: str, stream=None) -> str:
    """`wbcnet serve --hash-password USER`: the user's --users line, the password asked for."""
    return users_line(check_user(user), ask_password(user, stream))


def ask_password(user: str, stream=None) -> str:
    """The new password of `user`: asked twice on a terminal, else the first line of standard input."""
    stream = stream or sys.stdin
    if not stream.isatty():
        return stream.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {user}: ")
    if getpass.getpass("the same again: ") != first:
        raise WbcnetError("the two passwords differ; nothing was printed")
    return first


class Access:
    """The credentials a server takes: its token, its users, or neither (`on` is False: open)."""

    def __init__(self, token: str | None = None, users: dict[str, str] | None = None, *, made: bool = False,
                 users_file=None):
        if token is not None and (len(token) < MIN_TOKEN or not (token.isascii() and token.isprintable())
                                  or " " in token):
            raise WbcnetError(f"a token needs {MIN_TOKEN} or more printable ASCII characters without spaces (or "
                              f"leave it out: one is made at start)")
        self.token, self.users = token, dict(users or {})
        self.made, self.users_file = made, users_file  # for the start-up lines
        self._key = secrets.token_bytes(32)
        self._passed: dict[bytes, str] = {}
        self._lock = threading.Lock()
        self.bearer = HTTPBearer(auto_error=False, scheme_name="token", description=(
            "the server's token: Authorization: Bearer TOKEN (wbcnet serve --token, $WBCNET_TOKEN, or the one it "
            "printed at start)")) if self.token else None
        self.basic = HTTPBasic(auto_error=False, realm=REALM, scheme_name="password", description=(
            "a user of the server's password file (wbcnet serve --users) and their password")) if self.users else None

    @property
    def on(self) -> bool:
        return bool(self.token or self.users)

    def challenge(self) -> str:
        return ", ".join(f'{scheme} realm="{REALM}"' for scheme, used in (("Bearer", self.token), ("Basic", self.users))
                         if used)

    def refused(self, why: str) -> HTTPException:
        return HTTPException(401, why, headers={"WWW-Authenticate": self.challenge()})

    def asks_for(self) -> str:
        token = "its token (Authorization: Bearer TOKEN)" if self.token else ""
        password = "a user name and password (HTTP Basic)" if self.users else ""
        return " or ".join(x for x in (token, password) if x)

    def verify(self, token: HTTPAuthorizationCredentials | None, password: HTTPBasicCredentials | None) -> str:
        """Who sent the request ("token", or the user's name); else raises 401. Blocking (a password
        not seen before is hashed): call it from a thread."""
        if token is not None and self.token:
            if hmac.compare_digest(token.credentials.encode("utf-8"), self.token.encode("utf-8")):
                return "token"
            raise self.refused("wrong token (wbcnet serve printed it at start, or it was given with --token or "
                               "$WBCNET_TOKEN)")
        if password is not None and self.users:
            if self._password_ok(password.username, password.password):
                return password.username
            raise self.refused("wrong user name or password")
        raise self.refused(f"this server needs {self.asks_for()}; the page asks for it")

    def _password_ok(self, user: str, password: str) -> bool:
        key = hmac.new(self._key, f"{user}\0{password}".encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            if key in self._passed:
                return True
        encoded = self.users.get(user)
        # An unknown user costs the same hashing as a known one: the time says nothing of who exists.
        ok = verify_password(password, encoded or next(iter(self.users.values()))) and encoded is not None
        if ok:
            with self._lock:
                if len(self._passed) >= _REMEMBERED:
                    self._passed.clear()
                self._passed[key] = user
        return ok

    async def check(self, conn: HTTPConnection) -> str:
        """verify() on a request's Authorization header, read by FastAPI's own schemes."""
        try:
            token = await self.bearer(conn) if self.bearer else None
            password = await self.basic(conn) if self.basic else None
        except HTTPException:  # HTTP Basic that is not base64 of user:password
            raise self.refused("the Authorization header can't be read; send Bearer TOKEN or Basic "
                               "base64(user:password)") from None
        return await asyncio.to_thread(self.verify, token, password)

    def dependency(self):
        """The check as a FastAPI dependency on the schemes in use: on a route (or a router) it is
        run, and /openapi.json lists the schemes as the route's security."""
        if self.bearer and self.basic:
            def need(token: HTTPAuthorizationCredentials | None = Security(self.bearer),
                     password: HTTPBasicCredentials | None = Security(self.basic)) -> str:
                return self.verify(token, password)
        elif self.bearer:
            def need(token: HTTPAuthorizationCredentials | None = Security(self.bearer)) -> str:
                return self.verify(token, None)
        elif self.basic:
            def need(password: HTTPBasicCredentials | None = Security(self.basic)) -> str:
                return self.verify(None, password)
        else:
            raise ValueError("an open server has no credential to check")
        return need

    def said_at_start(self) -> list[str]:
        """The lines `wbcnet serve` says about who may use it."""
        if not self.on:
            return []
        ways = []
        if self.token:
            ways.append(f"the token {self.token} (made now; set ${TOKEN_ENV} to keep one across restarts)"
                        if self.made else "the token given (--token or $WBCNET_TOKEN)")
        if self.users:
            ways.append(f"the password of one of the {len(self.users)} user{'s' * (len(self.users) != 1)} of "
                        f"{self.users_file}")
        return [f"API requests need {' or '.join(ways)}; the page asks for it once"]


def server_access(remote: bool, token: str | None = None, users_file=None, environ=None) -> Access:
    """What `wbcnet serve` asks for: a token given (--token, else $WBCNET_TOKEN) and the users of
    --users; off loopback (`remote`) with neither, a token made now."""
    token = token or (environ if environ is not None else os.environ).get(TOKEN_ENV) or None
    users = read_users(users_file) if users_file else {}
    made = remote and not token and not users
    return Access(secrets.token_urlsafe(24) if made else token, users, made=made, users_file=users_file)


class Guard:
    """ASGI middleware: a request under /v1 without a credential the server takes gets 401 before
    any of its body is read (FastAPI reads a route's form before its dependencies run)."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == PROTECTED or path.startswith(PROTECTED + "/")):
            return await self.app(scope, receive, send)
        try:
            await self.access.check(HTTPConnection(scope))
        except HTTPException as e:
            await _drain(receive)  # else a client still sending reads a reset connection, not why
            return await JSONResponse({"detail": e.detail}, e.status_code, headers=e.headers)(scope, receive, send)
        await self.app(scope, receive, send)


async def _drain(receive) -> None:
    """Read the rest of a refused request's body (BodyLimit, outside, caps it)."""
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
    except HTTPException:  # over the cap: BodyLimit stopped it
        return
