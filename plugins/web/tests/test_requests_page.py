"""The access request pages over HTTP (docs/access-requests.md, "Web UI"): create, list, detail,
review, assume and switch back, each decided at auth as the user; and the attacker's side:
no CSRF token, reviewing one's own request, assuming a request that is pending, someone else's or
deleted, a bad ID, an unrequestable role, a missing reason, markup in a reason."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
import time
from collections.abc import Iterator

import pytest
from requests_helpers import PROMPT, REQUESTS, RESOURCES, create, created_id, post, requests_cluster, token
from web_helpers import WebCluster

from teleport_core.webui import SESSION_COOKIE


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebCluster]:
    yield from requests_cluster(tmp_path_factory.mktemp("requests"))


def hosts(text: str) -> list[str]:
    return re.findall(r'<td class="host">([^<]+)</td>', text)


def resources_until(web: object, want: bool) -> list[str]:
    """The resources page's hosts once ``req-prod-1`` is (``want``) or is not listed (the proxy
    may serve a node list a few seconds old)."""
    found: list[str] = []
    for _ in range(50):
        found = hosts(web.get(RESOURCES + "?search=req-").text)  # type: ignore[attr-defined]
        if ("req-prod-1" in found) == want:
            return found
        time.sleep(0.2)
    return found


def test_create_review_assume_switch_back(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        form = alice.get(f"{REQUESTS}/new")
        assert form.status_code == 200
        assert 'name="role:dba"' in form.text and PROMPT in form.text and "bob" in form.text
        assert 'id="reason"' in form.text and "required" in form.text  # request_access: reason
        assert f'href="{REQUESTS}"' in alice.get(RESOURCES).text  # in the navigation

        rid = created_id(create(alice, ["dba"], reason="fix the orders table"))
        detail = alice.get(f"{REQUESTS}/{rid}")
        assert detail.status_code == 200
        assert 'id="state">PENDING<' in detail.text and "fix the orders table" in detail.text
        assert 'id="approve"' not in detail.text and 'id="assume"' not in detail.text  # own, pending
        listed = alice.get(REQUESTS)
        assert rid in listed.text and "PENDING" in listed.text
        assert resources_until(alice, False) == ["req-dev-1"]
        event = rc.events("access_request.create", id=rid)
        assert event and event[0]["user"] == "alice" and event[0]["roles"] == ["dba"]

        assert rid in bob.get(f"{REQUESTS}?state=PENDING").text  # bob may review dba: he sees it
        page = bob.get(f"{REQUESTS}/{rid}")
        assert 'id="approve"' in page.text and 'id="deny"' in page.text
        answer = post(bob, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED", reason="ticket OPS-42")
        assert answer.status_code == 303 and answer.headers["location"] == f"{REQUESTS}/{rid}"
        page = bob.get(f"{REQUESTS}/{rid}")
        assert 'id="state">APPROVED<' in page.text and "ticket OPS-42" in page.text and 'id="approve"' not in page.text
        assert rc.events("access_request.review", id=rid, reviewer="bob", proposed_state="APPROVED")

        detail = alice.get(f"{REQUESTS}/{rid}")
        assert 'id="assume"' in detail.text
        answer = post(alice, f"{REQUESTS}/{rid}/assume")
        assert answer.status_code == 303 and answer.headers["location"] == RESOURCES
        page = alice.get(RESOURCES)
        assert 'id="elevated"' in page.text and rid[:8] in page.text and "requester, dba" in page.text
        assert resources_until(alice, True) == ["req-dev-1", "req-prod-1"]
        certs = [e for e in rc.events("cert.create", user="alice")
                 if e.get("identity", {}).get("access_requests") == [rid]]
        assert certs and "dba" in certs[-1]["identity"]["roles"]
        assert 'id="assumed"' in alice.get(f"{REQUESTS}/{rid}").text

        answer = post(alice, f"{REQUESTS}/switchback", next=RESOURCES)
        assert answer.status_code == 303 and answer.headers["location"] == RESOURCES
        page = alice.get(RESOURCES)
        assert 'id="elevated"' not in page.text
        assert resources_until(alice, False) == ["req-dev-1"]
        assert 'id="assume"' in alice.get(f"{REQUESTS}/{rid}").text  # still approved: may assume again


def test_no_csrf_token_is_refused(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        rid = created_id(create(alice, ["dba"]))
        before = len(rc.events("auth", user="bob"))
        answer = bob.post(f"{REQUESTS}/{rid}/review", data={"proposed_state": "APPROVED", "reason": "x"})
        assert answer.status_code == 403 and "CSRF" in answer.text
        answer = bob.post(f"{REQUESTS}/{rid}/review", data={"proposed_state": "APPROVED", "csrf_token": "forged"})
        assert answer.status_code == 403
        for _ in range(100):  # audited at the proxy: its spool delivers the events to auth
            if len(rc.events("auth", user="bob")) >= before + 2:
                break
            time.sleep(0.1)
        assert len(rc.events("auth", user="bob")) >= before + 2
        assert 'id="state">PENDING<' in bob.get(f"{REQUESTS}/{rid}").text  # nothing changed
        for path in ("new", "switchback", f"{rid}/assume"):
            assert alice.post(f"{REQUESTS}/{path}", data={"role:dba": "on", "reason": "r"}).status_code == 403
        assert len(re.findall(r'class="request"', alice.get(REQUESTS).text)) >= 1


def test_requester_cannot_review_own_request(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice:
        rid = created_id(create(alice, ["dba"]))
        answer = post(alice, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED", reason="me")
        assert answer.status_code == 403
        assert "cannot review their own request" in html.unescape(answer.text)
        assert 'id="state">PENDING<' in answer.text  # the request's page, with auth's reason on it
        assert any(f"review of access request {rid}: " in e.get("error", "") and "their own request" in e["error"]
                   for e in rc.events("auth", user="alice"))


def test_bad_form_input_gets_a_clear_message(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice:
        answer = create(alice, ["dba"], reason="")
        assert answer.status_code == 400
        assert f"reason: required (role &#34;requester&#34; requires a reason ({PROMPT}))" in answer.text
        answer = create(alice, ["nosuch"])
        assert answer.status_code == 400 and "no role allows requesting role" in html.unescape(answer.text)
        answer = create(alice, ["approver"])  # exists, but alice may not request it
        assert answer.status_code == 400 and 'requesting role "approver"' in html.unescape(answer.text)
        answer = create(alice, ["bad name!"])
        assert answer.status_code == 400 and "not a valid role name" in answer.text
        answer = create(alice, [])
        assert answer.status_code == 400 and "choose at least one role" in answer.text
        answer = create(alice, ["dba"], reviewers="bob, <x>")
        assert answer.status_code == 400 and "reviewers:" in answer.text and "<x>" not in answer.text
        answer = create(alice, ["dba"], reason="x" * 5000)
        assert answer.status_code == 400 and "at most 4096 characters" in answer.text

        answer = alice.get(f"{REQUESTS}/not-an-id")
        assert answer.status_code == 400 and "expected a request ID (a UUID)" in html.unescape(answer.text)
        answer = alice.get(f"{REQUESTS}/00000000-0000-4000-8000-000000000000")
        assert answer.status_code == 404 and "not found" in answer.text
        answer = post(alice, f"{REQUESTS}/not-an-id/assume")
        assert answer.status_code == 400
        answer = alice.get(f"{REQUESTS}?state=MAYBE")
        assert answer.status_code == 400 and "state: expected one of PENDING, APPROVED, DENIED" in answer.text

        rid = created_id(create(alice, ["dba"]))
        answer = post(alice, f"{REQUESTS}/{rid}/review", proposed_state="MAYBE")
        assert answer.status_code == 400 and "proposed_state: expected APPROVED or DENIED" in answer.text


def test_markup_in_a_reason_is_text(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        rid = created_id(create(alice, ["dba"], reason='<script>alert(1)</script><img src=x onerror="y">'))
        for page in (bob.get(REQUESTS).text, bob.get(f"{REQUESTS}/{rid}").text):
            assert "<script>alert" not in page and "<img src=x" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_assume_refused_unless_approved_and_own(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob, rc.logged_in("carol") as carol:
        pending = created_id(create(alice, ["dba"]))
        answer = post(alice, f"{REQUESTS}/{pending}/assume")
        assert answer.status_code == 403 and f"access request {pending} is PENDING, not APPROVED" in answer.text
        assert 'id="elevated"' not in alice.get(RESOURCES).text
        assert any(f"certificate reissue refused: access request {pending} is PENDING" in e.get("error", "")
                   for e in rc.events("auth", user="alice"))  # audited at auth

        assert post(bob, f"{REQUESTS}/{pending}/review", proposed_state="APPROVED").status_code == 303
        # carol may not see alice's request (not hers, not a reviewer of dba): 404, never her roles
        assert carol.get(f"{REQUESTS}/{pending}").status_code == 404
        assert pending not in carol.get(REQUESTS).text
        assert post(carol, f"{REQUESTS}/{pending}/assume").status_code == 404
        # bob sees it (a reviewer) but it is not his: auth refuses the reissue
        answer = post(bob, f"{REQUESTS}/{pending}/assume")
        assert answer.status_code == 403 and "of user &#34;bob&#34;" in answer.text
        assert 'id="elevated"' not in bob.get(RESOURCES).text

        denied = created_id(create(alice, ["dba"]))
        assert post(bob, f"{REQUESTS}/{denied}/review", proposed_state="DENIED", reason="no").status_code == 303
        answer = post(alice, f"{REQUESTS}/{denied}/assume")
        assert answer.status_code == 403 and "is DENIED, not APPROVED" in answer.text


def test_deleted_request_ends_the_elevated_session(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        rid = created_id(create(alice, ["dba"]))
        assert post(bob, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED").status_code == 303
        assert post(alice, f"{REQUESTS}/{rid}/assume").status_code == 303
        assert 'id="elevated"' in alice.get(RESOURCES).text
        rc.call("call", "DELETE", f"/v1/access_requests/{rid}")
        answer = alice.get(RESOURCES)  # the session's certificates carry a deleted request: locked
        assert answer.status_code == 303 and answer.headers["location"].startswith("/web/login")
        assert not alice.cookies.get(SESSION_COOKIE)


def test_elevated_session_ends_with_the_access(rc: WebCluster) -> None:
    """The reissued session expires at the request's access expiry, never after the login's."""
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        rid = created_id(create(alice, ["dba"]))
        assert post(bob, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED").status_code == 303
        doc = rc.call("call", "GET", f"/v1/access_requests/{rid}")
        assert post(alice, f"{REQUESTS}/{rid}/assume").status_code == 303
        page = alice.get(RESOURCES).text
        until = re.search(r'id="elevated-until">([^<]+)<', page)
        access = dt.datetime.fromisoformat(doc["spec"]["expires"])
        assert access - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)  # max_duration: 2h (the login: 30h)
        assert until and until.group(1) == access.strftime("%Y-%m-%d %H:%M UTC")
        assert token(page)  # the same session (cookie and CSRF token kept)


def test_web_session_reissue_is_for_proxies_only(rc: WebCluster) -> None:
    """A user (their certificate forwarded by the proxy) cannot reissue a web session at auth, not
    even their own; a session ID presented under another user's name is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from teleport_core.errors import AccessDenied, AuthenticationFailed

    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        rid = created_id(create(alice, ["dba"]))
        assert post(bob, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED").status_code == 303
        sid = json.loads(bytes.fromhex(alice.cookies[SESSION_COOKIE]))["sid"]
        record = rc.call("get_web_session", sid, "alice")
        der = x509.load_pem_x509_certificate(record["tls_cert"].encode()).public_bytes(Encoding.DER)

        async def as_alice() -> None:
            await rc.proxy.auth.for_user(der).reissue_web_session(sid, "alice", [rid])

        with pytest.raises(AccessDenied, match='access denied to user "alice"'):
            rc.handle.call(as_alice)
        with pytest.raises(AuthenticationFailed):
            rc.call("reissue_web_session", sid, "bob", [rid])  # alice's session under bob's name
        assert rc.call("get_web_session", sid, "alice")["active_requests"] == []  # unchanged
        assert 'id="elevated"' not in alice.get(RESOURCES).text
        done = rc.call("reissue_web_session", sid, "alice", [rid])  # auth's own identity, as a proxy would
        assert done["active_requests"] == [rid] and "dba" in done["roles"]
        assert 'id="elevated"' in alice.get(RESOURCES).text


def test_session_ends_at_the_access_expiry(rc: WebCluster) -> None:
    """erin's request grants 15 seconds: her elevated session ends then (login page); logged in
    again she has her base roles, and the lapsed request is gone (nothing to assume)."""
    with rc.logged_in("erin") as erin, rc.logged_in("bob") as bob:
        rid = created_id(create(erin, ["dba"], reason=""))
        assert post(bob, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED").status_code == 303
        assert post(erin, f"{REQUESTS}/{rid}/assume").status_code == 303
        answer = erin.get(RESOURCES)
        assert answer.status_code == 200 and 'id="elevated"' in answer.text and "brief, dba" in answer.text
        for _ in range(300):  # until the access expiry (15 s after the request was made)
            if answer.status_code != 200:
                break
            time.sleep(0.1)
            answer = erin.get(RESOURCES)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/web/login")
    with rc.logged_in("erin") as erin:
        assert 'id="elevated"' not in erin.get(RESOURCES).text
        assert resources_until(erin, False) == []
        # the certificates (whole seconds) may end up to a second before the access: wait for it;
        # auth's sweeper removes a lapsed request soon after: until then it shows as expired,
        # without Assume, and assuming it is refused
        for _ in range(100):
            page = erin.get(f"{REQUESTS}/{rid}")
            if page.status_code == 404 or 'id="expired"' in page.text:
                break
            assert 'id="assume"' in page.text  # not yet expired
            time.sleep(0.1)
        assert page.status_code == 404 or ('id="expired"' in page.text and 'id="assume"' not in page.text)
        answer = post(erin, f"{REQUESTS}/{rid}/assume")
        assert answer.status_code == 404 or (answer.status_code == 403 and f"{rid} expired at" in answer.text)


def test_switch_back_stays_on_this_site(rc: WebCluster) -> None:
    with rc.logged_in("alice") as alice:
        for target in ("https://evil.example/", "//evil.example/web/cluster/", "/web/login", ""):
            answer = post(alice, f"{REQUESTS}/switchback", next=target)
            assert answer.status_code == 303 and answer.headers["location"] == REQUESTS, target
        answer = post(alice, f"{REQUESTS}/switchback", next=f"{REQUESTS}?state=APPROVED")
        assert answer.headers["location"] == f"{REQUESTS}?state=APPROVED"


def test_review_form_only_for_who_may_review(rc: WebCluster) -> None:
    """bob reviews requests for dba, not ops: he sees alice's request for both (one role is his)
    but gets no review form or link, and a forged review is refused at auth (403, audited)."""
    with rc.logged_in("alice") as alice, rc.logged_in("bob") as bob:
        rid = created_id(create(alice, ["dba", "ops"]))
        page = bob.get(f"{REQUESTS}/{rid}")
        assert page.status_code == 200 and 'id="review-form"' not in page.text
        listed = bob.get(REQUESTS).text
        row = listed[listed.index(f'data-id="{rid}"'):].split("</tr>")[0]
        assert "review-link" not in row and ">View<" in row
        answer = post(bob, f"{REQUESTS}/{rid}/review", proposed_state="APPROVED", reason="why not")
        assert answer.status_code == 403
        assert 'may not review requests for role "ops"' in html.unescape(answer.text)
        assert any(f"review of access request {rid}: " in e.get("error", "") for e in rc.events("auth", user="bob"))
        assert 'id="state">PENDING<' in alice.get(f"{REQUESTS}/{rid}").text
        single = created_id(create(alice, ["dba"]))
        listed = bob.get(REQUESTS).text
        assert "review-link" in listed[listed.index(f'data-id="{single}"'):].split("</tr>")[0]
        assert 'id="review-form"' in bob.get(f"{REQUESTS}/{single}").text
