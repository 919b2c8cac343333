"""Access requests (Teleport's *Access Requests* pages) under ``/web/cluster/{cluster}/``:

- ``requests``: the requests auth shows the user (their own, those they may review, all with a
  rule on ``access_request``), newest first, filtered by state;
- ``requests/new``: a request for roles the user may request (``GET /v1/access_capabilities``),
  with the reason their roles ask for and reviewers to suggest;
- ``requests/<id>``: one request with its reviews; *Approve*/*Deny* with a reason for a reviewer
  (shown when the user's roles allow the review: ``WebProxy.may_review``; auth decides);
  *Assume roles* for the requester once it is approved;
- ``requests/switchback``: back to the base roles (the banner's *Switch back*, ``base.html``).

Every call is made as the user (``page.auth``): auth decides who may request, see, review and
assume, and audits each refusal; the page shows auth's message on the form (a 400 or 403 with the
page, never a 500). Assuming reissues the web session's certificates at auth, where their key stays
(``WebProxy.reissue``): the session then holds the request's roles and ends at its access expiry.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from typing import Any

from starlette.responses import Response
from starlette.routing import BaseRoute

from teleport_core.errors import AuthenticationFailed, NotFound, TeleportError
from teleport_core.policy.requests import (
    MAX_REASON,
    AccessRequest,
    InvalidAccessRequest,
    State,
    check_id,
    parse_access_request,
)
from teleport_web.framework import STATUS, Page, Web
from teleport_web.pages.admin import NAME, when

#: the form's checkbox of a role is named ``role:<name>`` (a form field keeps one value per name)
ROLE_FIELD = "role:"


def _status(exc: TeleportError) -> int:
    return next(code for kind, code in STATUS if isinstance(exc, kind))


def _names(text: str, what: str) -> list[str]:
    names = [n for n in re.split(r"[,\s]+", text) if n]
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise TeleportError(f"{what}: {bad[0][:40]!r} is not a valid name")
    return names


def _left(moment: dt.datetime, now: dt.datetime) -> str:
    """How long until ``moment``, as people say it (``in 3 h 20 min``; ``expired``)."""
    seconds = int((moment - now).total_seconds())
    if seconds <= 0:
        return "expired"
    hours, minutes = divmod((seconds + 59) // 60, 60)
    if not hours:
        return f"in {minutes} min"
    return f"in {hours} h {minutes} min" if minutes else f"in {hours} h"


def _row(page: Page, access: AccessRequest, now: dt.datetime) -> dict[str, Any]:
    """What the list and the detail show of a request."""
    assert page.session is not None
    expired = access.expired(now)
    return {
        "id": access.id, "short": access.id[:8], "href": page.url(f"requests/{access.id}"), "user": access.user,
        "roles": access.roles, "state": access.state, "expired": expired, "mine": access.user == page.user,
        "created": when(access.created.isoformat()), "expires": when(access.expires.isoformat()),
        "expires_in": _left(access.expires, now),
        "request_expires": when(access.request_expires.isoformat()),
        "request_expires_in": _left(access.request_expires, now),
        "reason": access.request_reason, "resolve_reason": access.resolve_reason,
        "assumable": access.user == page.user and access.active(now),
        "reviewable": (access.state == State.PENDING and not expired
                       and all(r.author != page.user for r in access.reviews)
                       and page.proxy.may_review(page.session, access)),
        "assumed": access.id in page.session.active_requests,
    }


async def _load(page: Page, request_id: str) -> AccessRequest:
    try:
        check_id(request_id, "request ID")
    except InvalidAccessRequest as exc:
        raise TeleportError(f"{exc.message}: this is not an access request's address") from None
    return parse_access_request(await page.auth.call("GET", f"/v1/access_requests/{request_id}"))


async def list_requests(page: Page) -> Response:
    state = page.request.query_params.get("state", "")
    if state and state not in State.ALL:
        raise TeleportError(f"state: expected one of {', '.join(State.ALL)}, got {state[:20]!r}")
    found = await page.auth.call("GET", "/v1/access_requests", params={"state": state} if state else None)
    now = dt.datetime.now(dt.UTC)
    requests = sorted((parse_access_request(doc) for doc in found["items"]), key=lambda a: a.created, reverse=True)
    rows = [_row(page, access, now) for access in requests]
    return page.render("requests.html", nav="requests", rows=rows, state=state, states=State.ALL)


async def _new_form(page: Page, *, message: str = "", status: int = 200) -> Response:
    caps = await page.auth.call("GET", "/v1/access_capabilities")
    chosen = {key[len(ROLE_FIELD):] for key in page.form if key.startswith(ROLE_FIELD)}
    return page.render("request_new.html", status=status, nav="requests", caps=caps, message=message,
                       chosen=chosen, form=page.form, max_reason=MAX_REASON)


async def new_request(page: Page) -> Response:
    return await _new_form(page)


async def create_request(page: Page) -> Response:
    """*Submit request*: ``POST /v1/access_requests`` as the user; auth's refusal shown on the form."""
    form = page.form
    try:
        roles = [key[len(ROLE_FIELD):] for key in form if key.startswith(ROLE_FIELD)]
        bad = [r for r in roles if not NAME.match(r)]
        if bad:
            raise TeleportError(f"roles: {bad[0][:40]!r} is not a valid role name")
        if not roles:
            raise TeleportError("roles: choose at least one role to request")
        reason = form.get("reason", "").strip()
        if len(reason) > MAX_REASON:
            raise TeleportError(f"reason: at most {MAX_REASON} characters")
        reviewers = _names(form.get("reviewers", ""), "reviewers")
        created = await page.auth.call("POST", "/v1/access_requests",
                                       {"roles": roles, "reason": reason, "suggested_reviewers": reviewers})
    except (AuthenticationFailed, NotFound):
        raise
    except TeleportError as exc:  # a 400 (role not requestable, reason required) or 403 from auth: on the form
        return await _new_form(page, message=str(exc), status=_status(exc))
    return page.redirect(page.url(f"requests/{created['metadata']['name']}"))


async def _detail(page: Page, access: AccessRequest, *, message: str = "", status: int = 200) -> Response:
    now = dt.datetime.now(dt.UTC)
    row = _row(page, access, now)
    reviews = [{"author": r.author, "state": r.proposed_state, "reason": r.reason,
                "created": when(r.created.isoformat()), "roles": r.roles} for r in access.reviews]
    thresholds = [{"name": t.name, "approve": t.approve, "deny": t.deny} for t in access.thresholds]
    return page.render("request_detail.html", status=status, nav="requests", row=row, reviews=reviews,
                       thresholds=thresholds, approvals=access.approvals, denials=access.denials,
                       suggested=access.suggested_reviewers, may_review=row["reviewable"], message=message,
                       form=page.form, max_reason=MAX_REASON)


async def show_request(page: Page) -> Response:
    return await _detail(page, await _load(page, page.request.path_params["id"]))


async def review_request(page: Page) -> Response:
    """*Approve* / *Deny*: ``POST /v1/access_requests/<id>/reviews`` as the user."""
    request_id = page.request.path_params["id"]
    access = await _load(page, request_id)
    proposed = page.form.get("proposed_state", "")
    reason = page.form.get("reason", "").strip()
    try:
        if proposed not in State.RESOLVED:
            raise TeleportError(f"proposed_state: expected APPROVED or DENIED, got {proposed[:20]!r}")
        if len(reason) > MAX_REASON:
            raise TeleportError(f"reason: at most {MAX_REASON} characters")
        await page.auth.call("POST", f"/v1/access_requests/{access.id}/reviews",
                             {"proposed_state": proposed, "reason": reason})
    except AuthenticationFailed:
        raise
    except TeleportError as exc:  # the requester, a reviewer who may not, a second review: auth's reason
        return await _detail(page, await _load(page, request_id), message=str(exc), status=_status(exc))
    return page.redirect(page.url(f"requests/{access.id}"))


async def assume_request(page: Page) -> Response:
    """*Assume roles*: the web session's certificates reissued with the request's roles (and those of
    requests assumed before), ending at the access expiry."""
    assert page.session is not None
    access = await _load(page, page.request.path_params["id"])
    ids = list(dict.fromkeys([*page.session.active_requests, access.id]))
    try:
        await page.proxy.reissue(page.session, ids)
    except AuthenticationFailed:
        raise
    except TeleportError as exc:  # not approved, expired, not the user's, locked: auth's reason, audited there
        return await _detail(page, access, message=str(exc), status=_status(exc))
    return page.redirect(page.url("resources"))


async def switch_back(page: Page) -> Response:
    """*Switch back*: the web session's certificates reissued with the base roles only."""
    assert page.session is not None
    await page.proxy.reissue(page.session, [])
    back = page.form.get("next", "")
    parsed = urllib.parse.urlsplit(back)
    same_site = back.startswith(page.url("")) and not parsed.scheme and not parsed.netloc
    return page.redirect(back if same_site else page.url("requests"))


def routes(web: Web) -> list[BaseRoute]:
    return [
        web.page("/web/cluster/{cluster}/requests", list_requests),
        web.page("/web/cluster/{cluster}/requests/new", new_request),
        web.page("/web/cluster/{cluster}/requests/new", create_request, methods=("POST",)),
        web.page("/web/cluster/{cluster}/requests/switchback", switch_back, methods=("POST",)),
        web.page("/web/cluster/{cluster}/requests/{id}", show_request),
        web.page("/web/cluster/{cluster}/requests/{id}/review", review_request, methods=("POST",)),
        web.page("/web/cluster/{cluster}/requests/{id}/assume", assume_request, methods=("POST",)),
    ]
