"""Web sessions and the login page over HTTP: redirects, wrong credentials (audited), lockout,
forged and borrowed session IDs, CSRF, logout, locked and deleted users, the cookie's rules."""

from __future__ import annotations

import json
import re
import urllib.parse

import httpx
import pytest
from web_helpers import CLUSTER, PASSWORD, WebCluster

from teleport_core.errors import AuthenticationFailed
from teleport_core.webui import SESSION_COOKIE

RESOURCES = f"/web/cluster/{CLUSTER}/resources"


def flash(answer: httpx.Response) -> str:
    """The reason a redirect to the login page carries (shown there once)."""
    for value in answer.headers.get_list("set-cookie"):
        if value.startswith("__Host-flash=") and "Max-Age=0" not in value:
            return urllib.parse.unquote(value.split("=", 1)[1].split(";", 1)[0])
    return ""


def forged_cookie(user: str, sid: str) -> str:
    return json.dumps({"user": user, "sid": sid}, separators=(",", ":")).encode().hex()


def test_no_cookie_redirects_to_login(cluster: WebCluster) -> None:
    with cluster.client() as web:
        answer = web.get(RESOURCES + "?search=x")
        assert answer.status_code == 303
        assert answer.headers["location"] == "/web/login?" + urllib.parse.urlencode({"next": RESOURCES + "?search=x"})
        assert answer.headers["cache-control"] == "no-store"
        for start in ("/", "/web", "/web/"):
            assert web.get(start).headers["location"] == RESOURCES
        post = web.post("/web/logout")  # a script's fetch: JSON
        assert post.status_code == 401 and post.json()["error"] == "log in to continue"
        form = web.post("/web/logout", headers={"Accept": "text/html,*/*"})  # a browser's form: the login page
        assert form.status_code == 303 and form.headers["location"] == "/web/login"
        login = web.get("/web/login")
        assert 'id="password"' in login.text and 'id="otp"' not in login.text  # second_factor: off


def test_login_sets_a_host_cookie_and_goes_to_next(cluster: WebCluster) -> None:
    with cluster.client() as web:
        answer = cluster.login(web, "alice", next_url=RESOURCES + "?search=web")
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == RESOURCES + "?search=web"
        cookie = next(v for v in answer.headers.get_list("set-cookie") if v.startswith(SESSION_COOKIE + "="))
        assert {"Secure", "HttpOnly", "SameSite=Strict", "Path=/"} <= {p.strip() for p in cookie.split(";")}
        assert "Domain" not in cookie and "Max-Age" not in cookie  # a browser-session cookie
        user, sid = json.loads(bytes.fromhex(web.cookies[SESSION_COOKIE]))["user"], \
            json.loads(bytes.fromhex(web.cookies[SESSION_COOKIE]))["sid"]
        assert user == "alice" and len(sid) >= 43  # token_urlsafe(32): 256 bits
        page = web.get(RESOURCES)
        assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
        assert "alice" in page.text and "private_key" not in page.text and "BEGIN" not in page.text
        assert web.get("/web/login").headers["location"] == RESOURCES  # already logged in
    success = cluster.events("user.login", user="alice", client="web")
    assert success and success[-1]["code"] == "T1000I" and success[-1]["method"] == "local"


def test_login_elsewhere_never_leaves_the_site(cluster: WebCluster) -> None:
    for target in ("//evil.example/web/x", "https://evil.example/", "/web\\@evil", "/v1/webapi/ping"):
        with cluster.client() as web:
            answer = cluster.login(web, "alice", next_url=target)
            assert answer.headers["location"] == RESOURCES, target


@pytest.mark.parametrize(("password", "otp", "message"), [
    ("wrong-password-123", None, "invalid"),
    (PASSWORD, "000000", "invalid"),
    (PASSWORD, "", "invalid"),
])
def test_wrong_credentials_are_refused_and_audited(otp_cluster: WebCluster, password: str, otp: str | None,
                                                     message: str) -> None:
    """Wrong password, wrong OTP code, no OTP code: the tsh login message, T1000W audited."""
    cluster = otp_cluster
    before = len(cluster.events("user.login", user="alice", code="T1000W"))
    with cluster.client() as web:
        assert 'id="otp"' in web.get("/web/login").text  # second_factor: otp asks for the code
        answer = cluster.login(web, "alice", password, otp=otp)
        assert answer.status_code == 401, answer.text
        shown = re.search(r'<p class="error" role="alert" id="message">([^<]+)</p>', answer.text)
        assert shown, answer.text
        assert message in shown.group(1).lower()
        assert SESSION_COOKIE not in web.cookies
    failures = cluster.events("user.login", user="alice", code="T1000W")
    assert len(failures) == before + 1 and failures[-1]["method"] == "local" and failures[-1]["client"] == "web"


def test_login_with_otp(otp_cluster: WebCluster) -> None:
    with otp_cluster.logged_in("alice") as web:
        assert web.get(RESOURCES).status_code == 200


def test_lockout_as_tsh_login(cluster: WebCluster) -> None:
    cluster.signup("carol", ["dev"])
    with cluster.client() as web:
        for _ in range(5):
            assert cluster.login(web, "carol", "not-the-password").status_code == 401
        answer = cluster.login(web, "carol")  # the right password: still locked
        assert answer.status_code == 401
        assert "carol exceeds 5 failed login attempts, locked until" in answer.text


def test_login_form_needs_its_csrf_pair(cluster: WebCluster) -> None:
    with cluster.client() as web:
        cluster.login_form(web)
        answer = web.post("/web/login", data={"login_csrf": "forged", "user": "alice", "password": PASSWORD})
        assert answer.status_code == 403 and "not sent by this site" in answer.text
        assert SESSION_COOKIE not in web.cookies
    refused = cluster.events("auth", user="alice")
    assert any("not sent by this site" in e.get("error", "") for e in refused)


def test_forged_and_borrowed_session_ids_are_refused(cluster: WebCluster) -> None:
    with cluster.logged_in("alice") as alice:
        sid = json.loads(bytes.fromhex(alice.cookies[SESSION_COOKIE]))["sid"]
        _borrow(cluster, alice, sid)


def _borrow(cluster: WebCluster, alice: httpx.Client, sid: str) -> None:
    cluster.signup("dave", ["dev"])
    for value in (forged_cookie("alice", "A" * 43),  # a guessed ID
                  forged_cookie("dave", sid),  # alice's ID presented as dave's
                  "not-hex", forged_cookie("", sid)):
        with cluster.client() as web:
            web.cookies.set(SESSION_COOKIE, value, domain="127.0.0.1")
            answer = web.get(RESOURCES)
            assert answer.status_code == 303 and answer.headers["location"].startswith("/web/login?")
            assert "log in again" in flash(answer)
    refused = [e.get("error", "") for e in cluster.events("auth")]
    assert any('web session of "alice" presented as "dave"' in e for e in refused)
    assert any("malformed" in e for e in refused)
    assert alice.get(RESOURCES).status_code == 200  # alice's own session was left alone


def test_state_changing_requests_need_the_csrf_token(cluster: WebCluster) -> None:
    with cluster.logged_in("alice") as web:
        answer = web.post("/web/logout")
        assert answer.status_code == 403 and "CSRF" in answer.text
        assert web.post("/web/logout", data={"csrf_token": "x" * 43}).status_code == 403
        assert web.get(RESOURCES).status_code == 200  # still logged in
        token = cluster.csrf(web)
        assert web.post("/web/logout", headers={"X-CSRF-Token": token}).status_code == 303  # fetch's way
    refused = [e for e in cluster.events("auth", user="alice") if "CSRF" in e.get("error", "")]
    assert refused and refused[-1]["client"] == "web"


def test_logout_deletes_the_session(cluster: WebCluster) -> None:
    with cluster.logged_in("alice") as web:
        _logout(cluster, web)


def _logout(cluster: WebCluster, web: httpx.Client) -> None:
    value = web.cookies[SESSION_COOKIE]
    sid = json.loads(bytes.fromhex(value))["sid"]
    answer = web.post("/web/logout", data={"csrf_token": cluster.csrf(web)})
    assert answer.status_code == 303 and answer.headers["location"] == "/web/login"
    assert any(v.startswith(SESSION_COOKIE + "=;") and "Max-Age=0" in v for v in answer.headers.get_list("set-cookie"))
    with pytest.raises(AuthenticationFailed):
        cluster.call("get_web_session", sid, "alice")
    with cluster.client() as replay:  # the old cookie, replayed
        replay.cookies.set(SESSION_COOKIE, value, domain="127.0.0.1")
        assert replay.get(RESOURCES).status_code == 303


def test_locked_user_session_ends(cluster: WebCluster) -> None:
    cluster.signup("erin", ["dev"])
    with cluster.logged_in("erin") as web:
        assert web.get(RESOURCES).status_code == 200
        cluster.call("upsert_lock", {"kind": "lock", "version": "v2", "metadata": {"name": "erin-lock"},
                                     "spec": {"target": {"user": "erin"}, "message": "erin is on leave"}})
        try:
            answer = web.get(RESOURCES)
            assert answer.status_code == 303
            assert "erin is on leave" in flash(answer)
            login = web.get(answer.headers["location"])
            assert "erin is on leave" in login.text  # shown once on the login page
            assert "erin is on leave" not in web.get("/web/login").text
            relogin = cluster.login(web, "erin")
            assert relogin.status_code == 403 and "erin is on leave" in relogin.text
        finally:
            cluster.call("delete_lock", "erin-lock")
        assert web.get(RESOURCES).status_code == 303  # the session ended for good


def test_deleted_user_session_ends(cluster: WebCluster) -> None:
    cluster.signup("frank", ["dev"])
    with cluster.logged_in("frank") as web:
        cluster.call("delete_user", "frank")
        answer = web.get(RESOURCES)
        assert answer.status_code == 303
        assert flash(answer)  # the lock the deletion left, or "no longer exists"


def test_web_sessions_are_for_proxies_only(cluster: WebCluster) -> None:
    """The proxy acting for a user (their certificate forwarded) cannot read web sessions at auth,
    even for a user whose roles allow everything; auth's own identity may."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from teleport_core.errors import AccessDenied

    cluster.call("upsert_role", {"kind": "role", "version": "v5", "metadata": {"name": "everything"},
                                 "spec": {"allow": {"rules": [{"resources": ["*"], "verbs": ["*"]}]}}})
    cluster.signup("root", ["everything"])
    with cluster.logged_in("root") as web:
        sid = json.loads(bytes.fromhex(web.cookies[SESSION_COOKIE]))["sid"]
    record = cluster.call("get_web_session", sid, "root")
    assert record["user"] == "root" and record["csrf_token"]
    der = x509.load_pem_x509_certificate(record["tls_cert"].encode()).public_bytes(Encoding.DER)

    async def as_root() -> None:
        await cluster.proxy.auth.for_user(der).get_web_session(sid, "root")

    with pytest.raises(AccessDenied, match="only proxies handle web sessions"):
        cluster.handle.call(as_root)
    assert any("only proxies handle web sessions" in e.get("error", "") for e in cluster.events("auth", user="root"))


def test_bad_login_bodies_are_clear_errors(cluster: WebCluster) -> None:
    """The form without a user or password (400, the form again), a body that is not UTF-8 (400),
    and auth's web session call with a bad body (400 naming the field)."""
    from teleport_core.errors import TeleportError

    with cluster.client() as web:
        token = cluster.login_form(web)
        empty = web.post("/web/login", data={"login_csrf": token, "user": "alice", "password": ""})
        assert empty.status_code == 400 and "enter your username and password" in empty.text
        binary = web.post("/web/login", content=b"user=\xff\xfe", headers={"Content-Type":
                                                                           "application/x-www-form-urlencoded"})
        assert binary.status_code == 400 and "the form is not UTF-8" in binary.text
    with pytest.raises(TeleportError, match="user"):
        cluster.call("create_web_session", "", "some-password-123", "")
    with pytest.raises(TeleportError, match="user"):
        cluster.call("get_web_session", "x" * 43, "")
