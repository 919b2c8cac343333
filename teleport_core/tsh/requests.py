"""``tsh request create|ls|show|review|drop`` and the access-request part of ``tsh login``.

As Teleport's: a user asks for roles their roles let them request (``tsh request create
--roles=dba --reason=...``), waits for a decision (a progress line on stderr; ``--nowait`` returns
at once), and on approval assumes the roles: the profile's certificates are reissued with them
added, expiring with the access (``tsh login --request-id=ID`` does the same later; ``tsh
request drop`` goes back to the base roles). Reviewers list the requests they may review and
approve or deny them (``tsh request review --approve|--deny ID --reason=...``).

Everything goes through the proxy's web API with the profile's certificate; auth decides who may
request, see, review and assume what (docs/access-requests.md). tsh only checks what it is
given (flags, request IDs) before sending anything.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from teleport_core.errors import AccessDenied, NotFound, TeleportError

if TYPE_CHECKING:
    from teleport_core.cli.common import CliContext
    from teleport_core.policy.requests import AccessRequest
    from teleport_core.tsh.profile import Profile

LOGIN_HINT = "use 'tsh login --request-id=<request-id>' to login with an approved request"
#: how often a waiting ``tsh request create`` asks for the request's state (seconds), and at most
POLL_FIRST, POLL_MAX = 0.5, 2.0
#: without a terminal, a waiting tsh says it is still waiting this often (seconds)
QUIET_PROGRESS = 30.0


class RequestDenied(TeleportError):
    """The request was denied (or expired) while tsh waited."""


# -- parsing ---------------------------------------------------------------------------------------------


def split_names(text: str, flag: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (order kept, duplicates dropped); an empty item or list is an error."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise TeleportError(f'{flag}: expected a comma-separated list like "a,b", got {json.dumps(text)}')
    bad = [item for item in items if not item.isprintable()]
    if bad:
        raise TeleportError(f"{flag}: {json.dumps(bad[0])} has control characters")
    return list(dict.fromkeys(items))


def check_request_id(text: str, flag: str = "request ID") -> str:
    """``text`` if it is a request ID (a UUID in lower case, as auth makes them); a clear error otherwise."""
    from teleport_core.policy.requests import InvalidAccessRequest, check_id

    try:
        return check_id(text.strip())
    except InvalidAccessRequest:
        raise TeleportError(f"{flag}: {json.dumps(text)} is not a request ID (a UUID like "
                            "bc8ca931-fec9-4b15-9a6f-20c13c5641a9, as tsh request ls prints them)") from None


def check_reason(text: str, flag: str = "--reason") -> str:
    if len(text) > 4096:
        raise TeleportError(f"{flag}: at most 4096 characters")
    return text


def _add_globals(parser: argparse.ArgumentParser) -> None:
    """tsh's global options on a subcommand too, without clobbering a value given before it."""
    from teleport_core.cli.common import GLOBAL_OPTIONS

    for flags, kwargs in GLOBAL_OPTIONS["tsh"]:
        parser.add_argument(*flags, **{**kwargs, "default": argparse.SUPPRESS})


def build_parser(cli: CliContext) -> argparse.ArgumentParser:
    """``tsh request`` and its subcommands, Teleport's flags."""
    from teleport_core.tsh import output

    parser = cli.parser("Manage access requests: ask for roles, review requests, assume approved roles.")
    subs = parser.add_subparsers(dest="action", metavar="COMMAND", required=True)

    def add(name: str, text: str) -> argparse.ArgumentParser:
        sub = subs.add_parser(name, help=text, description=text)
        _add_globals(sub)
        return sub

    create = add("create", "Create a new access request and wait for a decision (assume the roles when approved).")
    create.add_argument("--roles", default="", help="roles to request, comma-separated (required)")
    create.add_argument("--reason", default="", help="why you need the roles (shown to reviewers)")
    create.add_argument("--reviewers", default="", help="suggested reviewers, comma-separated")
    create.add_argument("--nowait", action="store_true", help="finish without waiting for a decision")
    ls = add("ls", "List access requests: yours, and those you may review.")
    output.add_format(ls)
    ls.add_argument("--reviewable", action="store_true", help="only requests you may review (not yours, "
                                                               "not reviewed by you yet)")
    ls.add_argument("--suggested", action="store_true", help="only requests that suggest you as a reviewer")
    ls.add_argument("--my-requests", action="store_true", help="only your own requests")
    show = add("show", "Show an access request's details.")
    show.add_argument("request_id", metavar="REQUEST_ID")
    output.add_format(show)
    review = add("review", "Review an access request: approve or deny it, with a reason.")
    review.add_argument("request_id", metavar="REQUEST_ID")
    review.add_argument("--approve", action="store_true", help="propose approval")
    review.add_argument("--deny", action="store_true", help="propose denial")
    review.add_argument("--reason", default="", help="why (shown to the requester and in the audit log)")
    drop = add("drop", "Drop active access requests: reissue certificates without their roles (all by default).")
    drop.add_argument("request_ids", metavar="REQUEST_ID", nargs="*", help="the requests to drop (default: all)")
    return parser


# -- talking to the proxy ----------------------------------------------------------------------------------


def _site(profile: Profile) -> str:
    return f"/v1/webapi/sites/{profile.cluster}"


def _call(profile: Profile, method: str, path: str, body: Any = None) -> Any:
    from teleport_core.tsh.web import call

    return call(profile.web_addr, method, _site(profile) + path, insecure=profile.insecure, profile=profile, body=body)


def create_request(profile: Profile, roles: Sequence[str], reason: str, reviewers: Sequence[str]) -> AccessRequest:
    return parse(_call(profile, "POST", "/accessrequest",
                       {"roles": list(roles), "reason": reason, "suggested_reviewers": list(reviewers)}))


def list_requests(profile: Profile) -> list[dict[str, Any]]:
    """The requests the user may see, in their resource form (what ``--format=json|yaml`` prints)."""
    found = _call(profile, "GET", "/accessrequest")
    items = found.get("items") if isinstance(found, dict) else None
    return [doc for doc in items or () if isinstance(doc, dict)]


def get_request_doc(profile: Profile, request_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = _call(profile, "GET", f"/accessrequest/{check_request_id(request_id)}")
    return doc


def get_request(profile: Profile, request_id: str) -> AccessRequest:
    return parse(get_request_doc(profile, request_id))


def review_request(profile: Profile, request_id: str, state: str, reason: str) -> AccessRequest:
    return parse(_call(profile, "POST", f"/accessrequest/{check_request_id(request_id)}/review",
                       {"proposed_state": state, "reason": reason}))


def reissue(profile: Profile, request_ids: Sequence[str]) -> Profile:
    """The profile's certificates again (same key) with the roles of ``request_ids`` (none: the base
    roles), saved as the current profile; the new profile."""
    from teleport_core.pki import keys
    from teleport_core.pki.identity import LocalIdentity
    from teleport_core.tsh.profile import agent_add, home, proxy_known_hosts

    if profile.folder is None:
        raise TeleportError("assuming requested roles needs a tsh login profile, not an identity file (-i)")
    ids = list(dict.fromkeys(request_ids))
    public_key = keys.public_key_openssh(keys.load_private_key(profile.identity.key_pem))
    try:
        answer = _call(profile, "POST", "/certs/reissue",
                       {"public_key": public_key, "access_requests": ids, "drop_access_requests": not ids})
    except AccessDenied as exc:
        if profile.active_requests and "lock targeting" in str(exc):
            # a deleted (locked) request in the certificates in hand: only a new login clears them
            raise AccessDenied(f"{exc} (the certificates carry a request that was deleted or locked: log in "
                               "again with tsh login)") from None
        raise
    identity = LocalIdentity(profile.identity.key_pem, answer["tls_cert"].encode(),
                             tuple(p.encode() for p in answer["host_ca_pems"]), answer["cert"],
                             proxy_known_hosts(answer["host_signers"], profile.proxy_host) + _leaf_lines(profile))
    renewed = attrs.evolve(profile, roles=tuple(answer["roles"]), logins=tuple(answer["logins"]),
                           valid_before=dt.datetime.fromisoformat(answer["valid_before"]), identity=identity,
                           active_requests=tuple(answer.get("active_requests") or ()))
    folder = renewed.save(home())
    agent_add(folder, renewed)
    return attrs.evolve(renewed, folder=folder)


def _leaf_lines(profile: Profile) -> tuple[str, ...]:
    """The profile's leaf host CA lines (the reissue answer has the root's only): kept as they were."""
    from teleport_core.tsh.hostcert import ca_line_clusters

    return tuple(line for line in profile.identity.known_hosts
                 if (found := ca_line_clusters(line)) and profile.proxy_cluster not in found)


def still_active(profile: Profile) -> list[str]:
    """The profile's active requests that still grant (approved, access not expired): a reissue
    keeps them; an expired or deleted one would be refused."""
    if not profile.active_requests:
        return []
    known = {req.id: req for req in map(parse, list_requests(profile))}
    return [rid for rid in profile.active_requests if rid in known and known[rid].active()]


def assume(profile: Profile, request_id: str) -> Profile:
    """Reissue the profile's certificates with ``request_id``'s roles added to those already assumed."""
    return reissue(profile, [*still_active(profile), request_id])


# -- what a request looks like ---------------------------------------------------------------------------------


def parse(doc: Any) -> AccessRequest:
    """A request the proxy sent, as the kernel's model (a malformed one is a clear error, not a crash)."""
    from teleport_core.policy.requests import InvalidAccessRequest, parse_access_request

    try:
        return parse_access_request(doc)
    except InvalidAccessRequest as exc:
        raise TeleportError(f"the proxy sent an access request tsh cannot read: {exc}") from None


def _rfc822(when: dt.datetime) -> str:
    """Go's ``time.RFC822`` in UTC, as Teleport prints creation times: ``07 Nov 19 19:38 UTC``."""
    return when.astimezone(dt.UTC).strftime("%d %b %y %H:%M UTC")


def _until(when: dt.datetime, now: dt.datetime) -> str:
    """Time left until ``when``, rounded to the minute, as Go prints a duration (``59m0s``, ``1h0m0s``)."""
    minutes = max(0, round((when - now).total_seconds() / 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes}m0s" if hours else f"{minutes}m0s"


def _quoted(text: str, default: str = "[none]") -> str:
    return json.dumps(text) if text else default


def _clean(text: str) -> str:
    """Server-sent text safe for a terminal (control characters escaped)."""
    return text if text.isprintable() else json.dumps(text)[1:-1]


HEAD = ("ID", "User", "Roles", "Created At (UTC)", "Request TTL", "Session TTL", "Status")


def table_rows(requests: Sequence[AccessRequest], now: dt.datetime) -> list[list[str]]:
    """Rows of ``tsh request ls``, newest first; requests whose access expired are left out (as Teleport)."""
    rows = []
    for req in sorted(requests, key=lambda r: r.created, reverse=True):
        if req.expires <= now:
            continue
        rows.append([req.id, _clean(req.user), _clean(",".join(req.roles)), _rfc822(req.created),
                     _until(req.request_expires, now) if req.state == "PENDING" else "",
                     _until(req.expires, now), req.state])
    return rows


def details(req: AccessRequest) -> list[str]:
    """``tsh request show``'s text, as Teleport's: the request, then its approvals and denials."""
    rows = [("Request ID:", req.id), ("Username:", _clean(req.user)), ("Roles:", _clean(", ".join(req.roles))),
            ("Reason:", _clean(_quoted(req.request_reason))),
            ("Reviewers:", _clean(", ".join(req.suggested_reviewers) or "[none]") + " (suggested)"),
            ("Access Expires:", req.expires.astimezone().strftime("%Y-%m-%d %H:%M:%S")),
            ("Status:", req.state)]
    if req.resolve_reason:
        rows.append(("Resolve Reason:", _clean(_quoted(req.resolve_reason))))
    width = max(len(k) for k, _ in rows) + 1
    lines = [f"{k:<{width}}{v}" for k, v in rows]
    for title, wanted in (("Approvals", "APPROVED"), ("Denials", "DENIED")):
        block = [r for r in req.reviews if r.proposed_state == wanted]
        if not block:
            continue
        lines.append("------------------------------------------------")
        lines.append(f"{title}:")
        for rev in block:
            lines.append("  ----------------------------------------------")
            lines.append(f"  Reviewer: {_clean(rev.author)}")
            lines.append(f"  Reason:   {_clean(_quoted(rev.reason))}")
    lines.extend(["", f"hint: {LOGIN_HINT}"])
    return lines


# -- waiting for a decision ---------------------------------------------------------------------------------


class Progress:
    """The progress line while tsh waits: rewritten in place on a terminal, a line now and then otherwise."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last_line = self.started

    def show(self, state: str) -> None:
        waited = int(time.monotonic() - self.started)
        if self.tty:
            sys.stderr.write(f"\rWaiting for request approval... {state} ({waited}s)\x1b[K")
            sys.stderr.flush()
        elif time.monotonic() - self.last_line >= QUIET_PROGRESS:
            self.last_line = time.monotonic()
            print(f"Still waiting for request approval... {state} ({waited}s)", file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def wait_for_decision(profile: Profile, req: AccessRequest, *,
                      fetch: Callable[[Profile, str], AccessRequest] | None = None,
                      sleep: Callable[[float], None] = time.sleep) -> AccessRequest:
    """Poll the request until it is no longer pending; the approved request, or :class:`RequestDenied`
    (denied, expired while pending, deleted)."""
    fetch = fetch or get_request
    print("Waiting for request approval...", file=sys.stderr, flush=True)
    progress = Progress(req.id)
    delay = POLL_FIRST
    try:
        while req.state == "PENDING":
            if req.expired():
                raise RequestDenied(f"request {req.id} expired while pending (tsh request create to ask again)")
            progress.show(req.state)
            sleep(delay)
            delay = min(delay * 2, POLL_MAX)
            try:
                req = fetch(profile, req.id)
            except NotFound:
                raise RequestDenied(f"request {req.id} was deleted while pending") from None
    finally:
        progress.done()
    if req.state != "APPROVED":
        message = f"request {req.id} has been set to {req.state}"
        if req.resolve_reason:
            message += f", reason={_quoted(_clean(req.resolve_reason))}"
        raise RequestDenied(message)
    if req.expired():
        raise RequestDenied(f"request {req.id} was approved but its access has expired already")
    return req


def create_and_assume(profile: Profile, roles: Sequence[str], reason: str, reviewers: Sequence[str],
                      nowait: bool) -> Profile | None:
    """``tsh request create`` / ``tsh login --request-roles``: create the request, print it, and unless
    ``nowait`` wait and assume the roles once approved (the new profile; None with ``nowait``)."""
    print("Creating request...")
    req = create_request(profile, roles, reason, reviewers)
    print("\n".join(details(req)[:-2]))  # the hint follows
    print(f"\nhint: {LOGIN_HINT}\n", flush=True)
    if nowait:
        return None
    approved = wait_for_decision(profile, req)
    if approved.resolve_reason:
        print(f"\nApproval received, reason={_quoted(_clean(approved.resolve_reason))}\n"
              "Getting updated certificates...\n", file=sys.stderr, flush=True)
    else:
        print("\nApproval received, getting updated certificates...\n", file=sys.stderr, flush=True)
    return assume(profile, approved.id)


# -- the commands ------------------------------------------------------------------------------------------------


def request(argv: list[str], cli: CliContext) -> int:
    """``tsh request create|ls|show|review|drop``."""
    args = build_parser(cli).parse_args(argv)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {
        "create": _create, "ls": _ls, "show": _show, "review": _review, "drop": _drop}
    return handlers[args.action](args)


def _profile(args: argparse.Namespace) -> Profile:
    from teleport_core.tsh.web import current

    for name in ("identity", "proxy", "insecure"):
        if not hasattr(args, name):
            setattr(args, name, None if name != "insecure" else False)
    return current(args)


def _create(args: argparse.Namespace) -> int:
    if not args.roles.strip():
        raise TeleportError("--roles: give one or more roles to request, comma-separated (--roles=dba)")
    roles = split_names(args.roles, "--roles")
    reviewers = split_names(args.reviewers, "--reviewers") if args.reviewers.strip() else []
    reason = check_reason(args.reason)
    profile = _profile(args)
    renewed = create_and_assume(profile, roles, reason, reviewers, args.nowait)
    if renewed is not None:
        from teleport_core.tsh.status import print_status

        print_status(renewed)
    return 0


def _ls(args: argparse.Namespace) -> int:
    from teleport_core.tsh import output

    profile = _profile(args)
    docs = list_requests(profile)
    pairs = [(doc, parse(doc)) for doc in docs]
    me = profile.user

    def others(req: AccessRequest) -> bool:  # not mine, not reviewed by me yet
        return req.user != me and all(r.author != me for r in req.reviews)

    if args.reviewable:
        pairs = [(d, r) for d, r in pairs if others(r)]
    if args.suggested:
        pairs = [(d, r) for d, r in pairs if others(r) and me in r.suggested_reviewers]
    if args.my_requests:
        pairs = [(d, r) for d, r in pairs if r.user == me]
    if args.format != "text":
        output.emit([d for d, _ in pairs], args.format)
        return 0
    print("\n".join(output.table(HEAD, table_rows([r for _, r in pairs], dt.datetime.now(dt.UTC)))))
    print("\nhint: use 'tsh request show <request-id>' for additional details")
    print(f"      {LOGIN_HINT}")
    return 0


def _show(args: argparse.Namespace) -> int:
    from teleport_core.tsh import output

    request_id = check_request_id(args.request_id)
    doc = get_request_doc(_profile(args), request_id)
    if args.format != "text":
        output.emit(doc, args.format)
        return 0
    print("\n".join(details(parse(doc))))
    return 0


def _review(args: argparse.Namespace) -> int:
    if args.approve == args.deny:
        raise TeleportError("must supply exactly one of '--approve' or '--deny'")
    request_id = check_request_id(args.request_id)
    state = "APPROVED" if args.approve else "DENIED"
    req = review_request(_profile(args), request_id, state, check_reason(args.reason))
    if req.state in ("PENDING", state):
        print(f"Successfully submitted review.  Request state: {req.state}", file=sys.stderr)
    else:
        print(f"Warning: ineffectual review. Request state: {req.state}", file=sys.stderr)
    return 0


def _drop(args: argparse.Namespace) -> int:
    from teleport_core.tsh.status import print_status

    wanted = [r for r in args.request_ids if r != "*"]
    ids = [check_request_id(r) for r in wanted]
    profile = _profile(args)
    unknown = [r for r in ids if r not in profile.active_requests]
    if unknown:
        active = ", ".join(profile.active_requests) or "none"
        raise TeleportError(f"request {unknown[0]} is not active in this profile (active: {active})")
    if ids:
        print(f"Dropping access request(s): {', '.join(ids)}...\n")
        keep = [r for r in still_active(profile) if r not in ids]
    else:
        print("Dropping all active access requests...\n")
        keep = []
    print_status(reissue(profile, keep))
    return 0


# -- tsh login --request-roles / --request-id ---------------------------------------------------------------------


def add_login_flags(parser: argparse.ArgumentParser) -> None:
    """``tsh login``'s access request flags (Teleport's names)."""
    parser.add_argument("--request-roles", default="", metavar="ROLES",
                        help="request these roles (comma-separated) and assume them once approved")
    parser.add_argument("--request-reason", default="", metavar="REASON", help="why (with --request-roles)")
    parser.add_argument("--request-reviewers", default="", metavar="USERS",
                        help="suggested reviewers, comma-separated (with --request-roles)")
    parser.add_argument("--request-nowait", action="store_true",
                        help="create the request without waiting for a decision (with --request-roles)")
    parser.add_argument("--request-id", default="", metavar="ID",
                        help="assume the roles of this approved request (login again if needed)")


@attrs.frozen
class LoginRequest:
    """What ``tsh login``'s request flags ask for: roles to request, or an approved request to assume."""

    roles: tuple[str, ...] = ()
    reason: str = ""
    reviewers: tuple[str, ...] = ()
    nowait: bool = False
    request_id: str = ""

    @property
    def wanted(self) -> bool:
        return bool(self.roles or self.request_id)


def login_request(args: argparse.Namespace) -> LoginRequest:
    """The request flags of ``tsh login``, checked before anything is sent."""
    roles = args.request_roles.strip()
    if roles and args.request_id:
        raise TeleportError("--request-roles and --request-id: give one or the other (create a request, or "
                            "assume an approved one)")
    if not roles:
        given = [flag for flag, value in (("--request-reason", args.request_reason),
                                          ("--request-reviewers", args.request_reviewers),
                                          ("--request-nowait", args.request_nowait)) if value]
        if given:
            raise TeleportError(f"{given[0]} needs --request-roles (the roles to request)")
    if args.request_id:
        return LoginRequest(request_id=check_request_id(args.request_id, "--request-id"))
    if not roles:
        return LoginRequest()
    reviewers = split_names(args.request_reviewers, "--request-reviewers") if args.request_reviewers.strip() else []
    return LoginRequest(tuple(split_names(args.request_roles, "--request-roles")),
                        check_reason(args.request_reason, "--request-reason"), tuple(reviewers),
                        bool(args.request_nowait))


def _ask(text: str) -> str:
    """A line from the user (shown as typed), after ``text`` on stderr."""
    sys.stderr.write(text)
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not sys.stdin.isatty():
        sys.stderr.write("\n")
    return line.rstrip("\r\n")


def login_policy(profile: Profile, wanted: LoginRequest, ask: Callable[[str], str] = _ask) -> LoginRequest:
    """What the user's roles' ``request_access`` make of a login (Teleport's request strategy):
    ``always`` and ``reason`` request every requestable role when no request flag asks for roles,
    ``reason`` asks why (with the roles' ``request_prompt``) when ``--request-reason`` is not given."""
    if wanted.request_id:
        return wanted
    try:
        caps = _call(profile, "GET", "/access_capabilities")
    except NotFound:  # a proxy or auth without access requests: nothing to apply
        return wanted
    mode = str(caps.get("request_access") or "optional")
    roles = wanted.roles
    if not roles and mode in ("always", "reason"):
        roles = tuple(str(r) for r in caps.get("requestable_roles") or ())
        if not roles:
            raise TeleportError(f"your roles require an access request at login (request_access: {mode}) but let "
                                "you request no role: ask an administrator")
        print(f"Your roles require an access request at login (request_access: {mode}): requesting "
              f"{', '.join(roles)}", file=sys.stderr)
    reason = wanted.reason
    if roles and mode == "reason" and not reason.strip():
        reason = check_reason(ask(f"{caps.get('request_prompt') or 'Reason'}: ").strip(), "reason")
        if not reason:
            raise TeleportError("a reason is required to request roles (request_access: reason); give "
                                "--request-reason")
    return attrs.evolve(wanted, roles=roles, reason=reason)


def login_with_request(profile: Profile, wanted: LoginRequest) -> Profile:
    """After ``tsh login`` (or with a valid profile already): request roles, or assume an approved request."""
    if wanted.request_id:
        return assume(profile, wanted.request_id)
    renewed = create_and_assume(profile, wanted.roles, wanted.reason, wanted.reviewers, wanted.nowait)
    return renewed if renewed is not None else profile
