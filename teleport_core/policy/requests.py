"""Access requests, as in Teleport: temporary elevation to more roles on approval.

The resource (stored by auth under ``/access_requests/<id>``)::

    kind: access_request
    version: v3
    metadata: {name: <uuid>, expires: <the request's end: pending TTL, then the access expiry>}
    spec:
      user: alice
      roles: [dba]
      state: PENDING | APPROVED | DENIED
      created: 2026-12-04T16:00:00Z
      expires: 2026-12-04T20:00:00Z          # the access expiry
      request_reason: "..."
      resolve_reason: "..."
      reviews: [{author: bob, roles: [reviewer], proposed_state: APPROVED, reason: "...", created: ...}]
      thresholds: [{name: default, approve: 1, deny: 1}]
      suggested_reviewers: [bob]

State machine: a ``PENDING`` request becomes ``APPROVED`` when its approvals reach every
threshold's ``approve`` count, ``DENIED`` when its denials reach any threshold's ``deny`` count
(deny is easier than approve: deny wins), or either by an admin's resolve. A resolved request
never changes state again. A pending request past its request TTL, or any request past its
access expiry, grants nothing (:meth:`AccessRequest.active`).

The pure policy functions take the :class:`~teleport_core.policy.roles.RoleSet` of a user:
which roles it may request (:func:`check_requestable`: ``allow.request.roles`` minus
``deny.request.roles``; deny wins), whether it may review a request
(:func:`review_decision`: ``allow.review_requests.roles`` covering every requested role, no
``deny.review_requests.roles`` matching one, never the requester), and how long access lasts
(:func:`access_expiry`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from teleport_core.errors import ConfigError
from teleport_core.policy.access import Decision
from teleport_core.policy.locks import InvalidLock, format_time, parse_time
from teleport_core.policy.roles import MAX_ACCESS_DURATION, RoleSet, Threshold, check_name

__all__ = [
    "ACTIVE_REQUESTS_OID", "CHANGES", "EXT_ACTIVE_REQUESTS", "KIND", "MAX_ACCESS_DURATION", "AccessRequest",
    "InvalidAccessRequest", "Review", "State", "Threshold", "access_expiry", "active_requests_json",
    "apply_review", "check_requestable", "new_request", "parse_access_request", "parse_active_requests",
    "request_to_dict", "resolve", "review_decision",
]

KIND = "access_request"
VERSION = "v3"
#: a pending request lasts this long unless approved or denied (Teleport's default request TTL)
DEFAULT_REQUEST_TTL = dt.timedelta(hours=1)
#: the SSH certificate extension naming the active requests (a JSON list), Teleport's name
EXT_ACTIVE_REQUESTS = "teleport-active-requests"
#: the X.509 subject attribute holding one active request ID each (Teleport's ASN.1 OID)
ACTIVE_REQUESTS_OID = "1.3.9999.2.8"
#: what :func:`teleport_core.hookspecs.teleport_access_request_changed` reports
CHANGES = ("created", "reviewed", "approved", "denied", "expired", "deleted")
#: the most request IDs one certificate carries
MAX_ACTIVE_REQUESTS = 16
MAX_REASON = 4096

_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class State:
    """The states of a request (Teleport's names)."""

    PENDING = "PENDING"
    APPROVED = "APPROVED"
    DENIED = "DENIED"
    ALL = ("PENDING", "APPROVED", "DENIED")
    RESOLVED = ("APPROVED", "DENIED")


class InvalidAccessRequest(ConfigError):
    """An access request document (or a change to one) that is not valid; ``str()`` names the key."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(path, message)
        self.path = path
        self.message = message
        self.args = (f"access_request: {path}: {message}" if path else f"access_request: {message}",)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _seconds(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        raise ValueError("access request times must be timezone-aware")
    return value.astimezone(dt.UTC).replace(microsecond=0)


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class Review:
    """One review: who (``author``, holding ``roles``), what they propose, why, when."""

    author: str
    proposed_state: str
    reason: str = ""
    roles: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    created: dt.datetime = attrs.field(factory=_now, converter=_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"author": self.author, "roles": list(self.roles), "proposed_state": self.proposed_state,
                "reason": self.reason, "created": format_time(self.created)}


def _reviews(value: Iterable[Review]) -> tuple[Review, ...]:
    return tuple(value)


def _thresholds(value: Iterable[Threshold]) -> tuple[Threshold, ...]:
    return tuple(value) or (Threshold(),)


@attrs.frozen
class AccessRequest:
    """An access request. ``request_expires``: when a pending request lapses (metadata.expires);
    ``expires``: when the access it grants ends."""

    id: str
    user: str
    roles: tuple[str, ...] = attrs.field(converter=_strings)
    state: str
    created: dt.datetime = attrs.field(converter=_seconds)
    expires: dt.datetime = attrs.field(converter=_seconds)
    request_expires: dt.datetime = attrs.field(converter=_seconds)
    request_reason: str = ""
    resolve_reason: str = ""
    reviews: tuple[Review, ...] = attrs.field(default=(), converter=_reviews)
    thresholds: tuple[Threshold, ...] = attrs.field(default=(), converter=_thresholds)
    suggested_reviewers: tuple[str, ...] = attrs.field(default=(), converter=_strings)

    def expired(self, now: dt.datetime | None = None) -> bool:
        """Past its access expiry, or pending past its request TTL: it grants nothing."""
        moment = now or _now()
        if moment >= self.expires:
            return True
        return self.state == State.PENDING and moment >= self.request_expires

    def active(self, now: dt.datetime | None = None) -> bool:
        """Whether it grants its roles now: approved and not expired."""
        return self.state == State.APPROVED and not self.expired(now)

    @property
    def approvals(self) -> int:
        return sum(1 for r in self.reviews if r.proposed_state == State.APPROVED)

    @property
    def denials(self) -> int:
        return sum(1 for r in self.reviews if r.proposed_state == State.DENIED)

    def stored_until(self) -> dt.datetime:
        """When the stored item may go: a pending or denied request at its request TTL (a denied
        one is kept that long to be seen), an approved one at its access expiry."""
        return self.expires if self.state == State.APPROVED else min(self.request_expires, self.expires)


# -- the resource form --------------------------------------------------------------------------------


def request_to_dict(request: AccessRequest) -> dict[str, Any]:
    """The resource form (API answers, ``tctl get``, the backend); :func:`parse_access_request` reads it."""
    return {
        "kind": KIND,
        "version": VERSION,
        "metadata": {"name": request.id, "expires": format_time(request.stored_until())},
        "spec": {
            "user": request.user,
            "roles": list(request.roles),
            "state": request.state,
            "created": format_time(request.created),
            "expires": format_time(request.expires),
            "request_expires": format_time(request.request_expires),
            "request_reason": request.request_reason,
            "resolve_reason": request.resolve_reason,
            "reviews": [r.to_dict() for r in request.reviews],
            "thresholds": [t.to_dict() for t in request.thresholds],
            "suggested_reviewers": list(request.suggested_reviewers),
        },
    }


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidAccessRequest(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _text(value: Any, path: str, *, limit: int = MAX_REASON) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidAccessRequest(path, f"expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidAccessRequest(path, f"at most {limit} characters")
    if "\x00" in value:
        raise InvalidAccessRequest(path, "NUL characters are not allowed")
    return value


def _name(value: Any, path: str, what: str) -> str:
    text = _text(value, path, limit=255)
    try:
        return check_name(what, text)
    except ValueError as exc:
        raise InvalidAccessRequest(path, str(exc)) from None


def _names(value: Any, path: str, what: str, *, required: bool = False) -> tuple[str, ...]:
    if value is None:
        value = []
    if not isinstance(value, list):
        raise InvalidAccessRequest(path, f"expected a list of {what} names, got {type(value).__name__}")
    names = tuple(dict.fromkeys(_name(item, f"{path}[{i}]", what) for i, item in enumerate(value)))
    if required and not names:
        raise InvalidAccessRequest(path, f"required: at least one {what}")
    return names


def _time(value: Any, path: str) -> dt.datetime:
    text = _text(value, path, limit=64)
    if not text:
        raise InvalidAccessRequest(path, "required: an RFC 3339 time")
    try:
        return parse_time(text, path)
    except InvalidLock as exc:
        raise InvalidAccessRequest(path, str(exc).split(": ", 2)[-1]) from None


def _state(value: Any, path: str, allowed: Sequence[str] = State.ALL) -> str:
    if value not in allowed:
        raise InvalidAccessRequest(path, f"expected one of {', '.join(allowed)}, got {json.dumps(value)}")
    return str(value)


def check_id(value: Any, path: str = "metadata.name") -> str:
    """A request ID: a lower-case UUID."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidAccessRequest(path, f"expected a request ID (a UUID), got {json.dumps(value)[:80]}")
    return value


def _threshold(raw: Any, path: str) -> Threshold:
    data = _mapping(raw, path)
    counts = []
    for key in ("approve", "deny"):
        value = data.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
            raise InvalidAccessRequest(f"{path}.{key}", f"expected a whole number from 1 to 100, got {value!r}")
        counts.append(value)
    return Threshold(_text(data.get("name"), f"{path}.name", limit=255) or "default", counts[0], counts[1])


def parse_access_request(data: Any, source: str = "") -> AccessRequest:
    """An access request from its resource form; :class:`InvalidAccessRequest` naming the key otherwise."""
    try:
        doc = _mapping(data, "")
        if doc.get("kind", KIND) != KIND:
            raise InvalidAccessRequest("kind", f"expected {KIND}, got {json.dumps(doc.get('kind'))}")
        if doc.get("version", VERSION) != VERSION:
            raise InvalidAccessRequest("version", f"expected {VERSION}, got {json.dumps(doc.get('version'))}")
        meta = _mapping(doc.get("metadata"), "metadata")
        spec = _mapping(doc.get("spec"), "spec")
        expires = _time(spec.get("expires"), "spec.expires")
        raw_reviews = spec.get("reviews") or []
        if not isinstance(raw_reviews, list):
            raise InvalidAccessRequest("spec.reviews", "expected a list of reviews")
        reviews = []
        for i, raw in enumerate(raw_reviews):
            where = f"spec.reviews[{i}]"
            review = _mapping(raw, where)
            reviews.append(Review(
                author=_name(review.get("author"), f"{where}.author", "user"),
                proposed_state=_state(review.get("proposed_state"), f"{where}.proposed_state", State.RESOLVED),
                reason=_text(review.get("reason"), f"{where}.reason"),
                roles=_names(review.get("roles"), f"{where}.roles", "role"),
                created=_time(review.get("created"), f"{where}.created"),
            ))
        raw_thresholds = spec.get("thresholds") or []
        if not isinstance(raw_thresholds, list):
            raise InvalidAccessRequest("spec.thresholds", "expected a list of thresholds")
        request_expires = spec.get("request_expires") or meta.get("expires")
        return AccessRequest(
            id=check_id(meta.get("name")),
            user=_name(spec.get("user"), "spec.user", "user"),
            roles=_names(spec.get("roles"), "spec.roles", "role", required=True),
            state=_state(spec.get("state"), "spec.state"),
            created=_time(spec.get("created"), "spec.created"),
            expires=expires,
            request_expires=_time(request_expires, "spec.request_expires") if request_expires else expires,
            request_reason=_text(spec.get("request_reason"), "spec.request_reason"),
            resolve_reason=_text(spec.get("resolve_reason"), "spec.resolve_reason"),
            reviews=reviews,
            thresholds=[_threshold(t, f"spec.thresholds[{i}]") for i, t in enumerate(raw_thresholds)],
            suggested_reviewers=_names(spec.get("suggested_reviewers"), "spec.suggested_reviewers", "user"),
        )
    except InvalidAccessRequest as exc:
        if source:
            exc.args = (f"{source}: {exc.args[0]}",)
        raise


# -- certificates -------------------------------------------------------------------------------------


def active_requests_json(ids: Sequence[str]) -> str:
    """The ``teleport-active-requests`` extension's value: a JSON list of IDs."""
    return json.dumps(list(ids), separators=(",", ":"))


def parse_active_requests(text: str | bytes | None) -> tuple[str, ...]:
    """The request IDs of a ``teleport-active-requests`` value ("" or None: none); ValueError if malformed."""
    if not text:
        return ()
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("teleport-active-requests is not valid JSON") from None
    if not isinstance(value, list) or len(value) > MAX_ACTIVE_REQUESTS or not all(
            isinstance(item, str) and _ID.fullmatch(item) for item in value):
        raise ValueError("teleport-active-requests must be a JSON list of request IDs")
    return tuple(value)


# -- the state machine --------------------------------------------------------------------------------


def new_request(user: str, roles: Sequence[str], *, reason: str = "", thresholds: Sequence[Threshold] = (),
                suggested_reviewers: Sequence[str] = (), access_expires: dt.datetime,
                request_ttl: dt.timedelta = DEFAULT_REQUEST_TTL, now: dt.datetime | None = None) -> AccessRequest:
    """A new pending request with a fresh ID; it lapses at ``request_ttl`` or ``access_expires``, the earlier."""
    moment = now or _now()
    return AccessRequest(
        id=str(uuidlib.uuid4()), user=user, roles=tuple(dict.fromkeys(roles)), state=State.PENDING,
        created=moment, expires=access_expires, request_expires=min(moment + request_ttl, access_expires),
        request_reason=reason, thresholds=tuple(thresholds), suggested_reviewers=tuple(suggested_reviewers))


def _unresolved(request: AccessRequest, now: dt.datetime) -> None:
    if request.state != State.PENDING:
        raise InvalidAccessRequest("spec.state", f"the request is already {request.state}: a resolved request "
                                                 "never changes state")
    if request.expired(now):
        raise InvalidAccessRequest("spec.state", "the request has expired")


def apply_review(request: AccessRequest, review: Review, now: dt.datetime | None = None) -> AccessRequest:
    """``request`` with ``review`` added and its state from the thresholds: APPROVED once approvals
    reach every threshold's ``approve``, DENIED once denials reach any threshold's ``deny``.
    Refused for a resolved or expired request, and for a second review by the same author."""
    moment = now or _now()
    _unresolved(request, moment)
    _state(review.proposed_state, "proposed_state", State.RESOLVED)
    if any(r.author == review.author for r in request.reviews):
        raise InvalidAccessRequest("author", f"{json.dumps(review.author)} has already reviewed this request")
    reviewed = attrs.evolve(request, reviews=(*request.reviews, review))
    if reviewed.denials >= min(t.deny for t in reviewed.thresholds):
        return attrs.evolve(reviewed, state=State.DENIED, resolve_reason=review.reason)
    if reviewed.approvals >= max(t.approve for t in reviewed.thresholds):
        return attrs.evolve(reviewed, state=State.APPROVED, resolve_reason=review.reason)
    return reviewed


def resolve(request: AccessRequest, state: str, reason: str = "", roles: Sequence[str] = (),
            now: dt.datetime | None = None) -> AccessRequest:
    """An admin's decision (``tctl request approve|deny``): ``roles`` (approve only) narrows the
    request to a subset of its roles."""
    moment = now or _now()
    _unresolved(request, moment)
    _state(state, "state", State.RESOLVED)
    granted = request.roles
    if roles:
        extra = [r for r in roles if r not in request.roles]
        if extra:
            raise InvalidAccessRequest("roles", f"not requested: {', '.join(extra)} (expected a subset of "
                                                f"{', '.join(request.roles)})")
        if state != State.APPROVED:
            raise InvalidAccessRequest("roles", "a subset of roles applies to an approval only")
        granted = tuple(dict.fromkeys(roles))
    return attrs.evolve(request, state=state, resolve_reason=reason, roles=granted)


# -- policy -------------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def check_requestable(roleset: RoleSet, roles: Sequence[str]) -> Decision:
    """May the holder of ``roleset`` request every one of ``roles``? A role is requestable when some
    role's ``allow.request.roles`` matches it and no role's ``deny.request.roles`` does (deny wins)."""
    if not roles:
        return Decision.deny("no roles requested")
    for name in roles:
        for role in roleset.roles:
            if role.deny.request.matches(name):
                return Decision.deny(f"role {_q(role.name)} denies requesting role {_q(name)}")
        if not any(role.allow.request.matches(name) for role in roleset.roles):
            return Decision.deny(f"no role allows requesting role {_q(name)}")
    return Decision.allow(f"may request {', '.join(roles)}")


def _granting(roleset: RoleSet, roles: Sequence[str]) -> list[Any]:
    """The requester's roles whose ``allow.request`` matches one of ``roles``."""
    return [role for role in roleset.roles if any(role.allow.request.matches(name) for name in roles)]


def request_thresholds(roleset: RoleSet, roles: Sequence[str]) -> tuple[Threshold, ...]:
    """The thresholds of the roles that allow the request (the default ``approve: 1, deny: 1`` if none)."""
    found = [t for role in _granting(roleset, roles) for t in role.allow.request.thresholds]
    return tuple(dict.fromkeys(found)) or (Threshold(),)


def suggested_reviewers(roleset: RoleSet, roles: Sequence[str], extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The reviewers the user named, then those the granting roles suggest."""
    found = [*extra, *(r for role in _granting(roleset, roles) for r in role.allow.request.suggested_reviewers)]
    return tuple(dict.fromkeys(found))


def reason_required(roleset: RoleSet) -> str:
    """Why a reason is needed (``options.request_access: reason`` on a role; its prompt), else ""."""
    for role in roleset.roles:
        if role.options.request_access == "reason":
            prompt = role.options.request_prompt
            return f"role {_q(role.name)} requires a reason" + (f" ({prompt})" if prompt else "")
    return ""


def access_expiry(requester: RoleSet, requested: RoleSet, now: dt.datetime | None = None,
                  session_expires: dt.datetime | None = None) -> dt.datetime:
    """When access granted by a request ends: the requester's roles' ``request.max_duration``
    (the smallest of the granting roles; capped at 14 days), the user's session
    (``session_expires``: the certificate the request is made with), and ``max_session_ttl`` of
    the requester's and the requested roles, whichever comes first."""
    moment = now or _now()
    limits = [MAX_ACCESS_DURATION, requester.max_session_ttl, requested.max_session_ttl]
    durations = [role.allow.request.max_duration for role in _granting(requester, requested.names)]
    limits.extend(d for d in durations if d is not None)
    ends = moment + min(limits)
    if session_expires is not None:
        ends = min(ends, session_expires)
    return ends


def review_decision(reviewer: str, reviewer_roles: RoleSet, request: AccessRequest) -> Decision:
    """May ``reviewer`` (holding ``reviewer_roles``) review ``request``? Never the requester; some
    role's ``allow.review_requests.roles`` must match every requested role and no role's
    ``deny.review_requests.roles`` any of them (deny wins)."""
    if reviewer == request.user:
        return Decision.deny(f"user {_q(reviewer)} cannot review their own request")
    for name in request.roles:
        for role in reviewer_roles.roles:
            if role.deny.review_requests.matches(name):
                return Decision.deny(f"role {_q(role.name)} denies reviewing requests for role {_q(name)}")
        if not any(role.allow.review_requests.matches(name) for role in reviewer_roles.roles):
            return Decision.deny(f"user {_q(reviewer)} may not review requests for role {_q(name)}")
    return Decision.allow(f"user {_q(reviewer)} may review requests for {', '.join(request.roles)}")


def may_see(user: str, reviewer_roles: RoleSet, request: AccessRequest) -> bool:
    """Whether ``user`` sees ``request`` without the ``access_request`` rules: their own, or one for a
    role their ``allow.review_requests`` names (whether they may review it all is :func:`review_decision`)."""
    if request.user == user:
        return True
    return any(role.allow.review_requests.matches(name) for role in reviewer_roles.roles for name in request.roles)
