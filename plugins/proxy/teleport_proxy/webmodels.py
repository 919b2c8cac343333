"""The proxy web API's typed bodies and its route table (:data:`ROUTES`), from which the
OpenAPI document (``GET /v1/webapi/openapi.json``, no certificate needed) is generated; the
models are those of :mod:`teleport_core.api.schema` (pydantic v2), validated before a handler acts."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints

from teleport_core import __version__
from teleport_core.api import schema
from teleport_core.api.schema import (
    LIST_MAX,
    NAME_MAX,
    NO_CONTROL,
    Body,
    Duration,
    JSONObject,
    Message,
    Name,
    NameList,
    Operation,
    OptionalName,
    OTPCode,
    Password,
    PublicKey,
    Query,
    Reply,
    Timestamp,
    TokenText,
)

#: where the document is served
OPENAPI_PATH = "/v1/webapi/openapi.json"
#: what a route that asks auth may answer: auth's refusals pass through (503 while its audit log
#: cannot record); 502 when auth cannot be reached
AUTH_ERRORS = ("401", "403", "404", "409", "412", "502", "503")
#: password logins and invite completions: a few short fields
SMALL_BODY = 32 * 1024  # a public key may be 16 KiB


class TrustedClusterValidateBody(Body):
    """A leaf's trusted clusters handshake, forwarded to auth: the root's trusted_cluster token, the leaf's
    name and its host and user CAs' public parts (``type``, ``cluster``, ``ssh_public_keys``, ``tls_certs``)."""

    token: TokenText
    leaf_name: Name
    cas: Annotated[list[JSONObject], Field(min_length=2, max_length=2)]


class TrustedClusterValidateReply(Reply):
    root_name: str
    cas: list[dict[str, Any]]


class LoginBody(Body):
    """``tsh login``: a password (+ OTP) login; ``pub_key`` is signed for SSH and TLS."""

    user: Name
    password: Password
    otp_token: OTPCode = ""
    pub_key: PublicKey
    ttl: Duration = ""


class CompleteInviteBody(Body):
    """Completing an invite or reset: the token, the new password, the OTP code when enrolling."""

    token: TokenText
    password: Password
    second_factor_token: OTPCode = ""


class RecordingsQuery(Query):
    since: Timestamp = Field("", alias="from", description="RFC 3339; default a day before to")
    until: Timestamp = Field("", alias="to", description="RFC 3339; default now")
    limit: int = Field(0, ge=0, le=1000, description="sessions at most (0: the server's default)")
    search: str = Field("", max_length=1024, description="only sessions whose recording shows this text (a phrase)")


class StreamQuery(Query):
    offset: int = Field(0, ge=0, description="the first byte wanted (what the caller has so far)")


#: an access request's ID (a UUID, as auth makes them)
REQUEST_ID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
RequestID = Annotated[str, StringConstraints(min_length=36, max_length=36, pattern=REQUEST_ID)]
Decision = Literal["APPROVED", "DENIED"]


class AccessRequestBody(Body):
    """``tsh request create``: the roles wanted, why, and who should review (the user is the caller's)."""

    roles: Annotated[NameList, Field(min_length=1)]
    reason: Message = ""
    suggested_reviewers: NameList = []
    dry_run: bool = False


class AccessRequestsQuery(Query):
    state: Literal["", "PENDING", "APPROVED", "DENIED"] = Field("", description="only requests in this state")
    user: OptionalName = Field("", description="only requests of this user")


class ReviewBody(Body):
    """``tsh request review``: the reviewer (the caller) proposes a state, with a reason."""

    proposed_state: Decision
    reason: Message = ""


class ReissueBody(Body):
    """``tsh login --request-id``, ``tsh request drop``: the caller's certificates again, for ``public_key``,
    with the roles of ``access_requests`` (the caller's approved, unexpired requests) added; ``[]`` for the
    base roles."""

    public_key: PublicKey
    access_requests: Annotated[list[RequestID], Field(max_length=LIST_MAX)] = []
    drop_access_requests: bool = False
    ttl: Duration = ""


class ProxySSH(Reply):
    listen_addr: str
    public_addr: str
    tunnel_listen_addr: str
    ssh_tunnel_public_addr: str


class ProxySettings(Reply):
    ssh: ProxySSH
    web_public_addr: str
    tls_routing_enabled: bool


class AuthSettings(Reply):
    type: str
    second_factor: str


class PingReply(Reply):
    cluster_name: str
    server_version: str
    auth: AuthSettings
    proxy: ProxySettings


class LoginReply(Reply):
    username: str
    roles: list[str]
    logins: list[str]
    cert: str
    tls_cert: str
    valid_before: str
    cluster_name: str
    host_ca_pems: list[str]
    host_signers: list[str]


class InviteReply(Reply):
    user: str
    otp_uri: str | None = None


class DoneReply(Reply):
    user: str


class SiteReply(Reply):
    """A cluster of ``tsh clusters``: this one (``root``) or a leaf the caller's roles let them see."""

    name: str
    status: str
    cluster_type: str
    last_connected: str = ""
    labels: dict[str, str] = {}


class NodeReply(Reply):
    uuid: str
    nodename: str
    addr: str
    labels: dict[str, str]
    tunnel: bool
    logins: list[str]
    sub_kind: str = "teleport"  # "openssh": an agentless sshd the proxy speaks for


class SessionReply(Reply):
    """A session that ended (see the auth API's ``GET /v1/sessions``)."""

    sid: str
    user: str
    start: str
    end: str
    recorded: bool
    end_reason: str = ""
    recording: str = Field("", description="uploaded, pending, missing (from the session storage) or off")
    snippet: str = Field("", description="with search: the recording's text around the first match")


class AccessRequestReply(Reply):
    """An ``access_request`` resource (kind, version, metadata, spec), as auth stores it."""

    kind: str
    version: str
    metadata: dict[str, Any]
    spec: dict[str, Any]


class AccessRequestsReply(Reply):
    items: list[AccessRequestReply]


class CapabilitiesReply(Reply):
    """What the caller may request and how ``tsh login`` asks (Teleport's access capabilities)."""

    requestable_roles: list[str]
    suggested_reviewers: list[str]
    request_access: str = Field(description="optional, always (tsh login requests the roles) or reason (and asks "
                                            "why)")
    request_prompt: str


class ReissueReply(LoginReply):
    """New certificates (as a login's) and the access requests they carry."""

    active_requests: list[str]


class ActiveSessionsReply(Reply):
    """The live sessions the caller may see: ``session_tracker`` resources (kind, version, metadata, spec)."""

    sessions: list[dict[str, Any]]


PATH_PARAMS: dict[str, Any] = {
    "token": TokenText,
    "cluster": Name,
    "sid": Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=NO_CONTROL)],
    "request_id": RequestID,
}

ROUTES: list[Operation] = [
    Operation("/webapi/ping", "GET", "ping", "Cluster name, proxy addresses, auth settings", response=PingReply,
              anonymous=True, errors=()),
    Operation("/webapi/find", "GET", "find", "The same as ping (Teleport's find)", response=PingReply,
              anonymous=True, errors=()),
    Operation("/v1/webapi/ping", "GET", "ping_v1", "The same as ping", response=PingReply, anonymous=True,
              errors=()),
    Operation("/v1/webapi/ssh/certs", "POST", "login",
              "Password (+ OTP) login: signs pub_key, returns SSH and TLS certificates and the host CAs",
              body=LoginBody, response=LoginReply, max_body=SMALL_BODY, anonymous=True, errors=(*AUTH_ERRORS, "429")),
    Operation("/v1/webapi/users/password/token/{token}", "GET", "get_invite",
              "The user of an invite or reset token and its OTP enrollment URI", response=InviteReply,
              anonymous=True, errors=AUTH_ERRORS),
    Operation("/v1/webapi/users/password/token", "PUT", "complete_invite",
              "Complete an invite or reset: the new password and the OTP code", body=CompleteInviteBody,
              response=DoneReply, max_body=SMALL_BODY, anonymous=True, errors=AUTH_ERRORS),
    Operation("/v1/webapi/trustedclusters/validate", "POST", "validate_trusted_cluster",
              "Trusted clusters: a leaf's auth joins with the root's trusted_cluster token, its CAs for the root's",
              body=TrustedClusterValidateBody, response=TrustedClusterValidateReply, max_body=SMALL_BODY,
              anonymous=True, errors=(*AUTH_ERRORS, "429")),
    Operation("/favicon.ico", "GET", "favicon", "No icon (an empty answer)", anonymous=True, errors=(), status=204),
    Operation("/v1/webapi/sites", "GET", "sites", "This cluster and the leaf clusters the caller's roles let them see "
              "(tsh clusters), with their status", response=list[SiteReply], errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/nodes", "GET", "nodes", "The nodes the caller may see, with their logins",
              response=list[NodeReply], errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/events/search/sessions", "GET", "recordings",
              "Sessions that ended in a window (from, to, limit; search: only those whose recording shows the "
              "text), newest first; authorized at auth for the caller",
              query=RecordingsQuery, response=list[SessionReply], errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/sessions", "GET", "active_sessions",
              "Live sessions (session trackers) the caller may see: its own, those its join_sessions allow, "
              "all with list on session_tracker; authorized at auth for the caller",
              response=ActiveSessionsReply, errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/sessions/{sid}/recording", "GET", "recording",
              "A session recording (asciicast v2), authorized at auth for the caller", media="application/x-asciicast",
              errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/sessions/{sid}/stream", "GET", "recording_stream",
              "A session's recording from a byte offset while it runs (sync recording modes) or after: tsh play "
              "--follow and the web player; X-Teleport-Recording (streaming, complete), X-Teleport-Session "
              "(running, ended) and X-Teleport-Next-Offset headers; authorized at auth for the caller",
              query=StreamQuery, media="application/x-asciicast", errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/accessrequest", "POST", "create_access_request",
              "tsh request create: a pending access request of the caller for roles (400 when a role is not "
              "requestable or a reason is required)", body=AccessRequestBody, response=AccessRequestReply,
              max_body=SMALL_BODY, errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/accessrequest", "GET", "access_requests",
              "tsh request ls: the caller's own access requests, those it may review, all with list on "
              "access_request", query=AccessRequestsQuery, response=AccessRequestsReply, errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/accessrequest/{request_id}", "GET", "access_request",
              "tsh request show: one access request the caller may see (404 otherwise)",
              response=AccessRequestReply, errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/accessrequest/{request_id}/review", "POST", "review_access_request",
              "tsh request review: the caller's review (never of its own request; its review_requests roles must "
              "cover every requested role)", body=ReviewBody, response=AccessRequestReply, max_body=SMALL_BODY,
              errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/access_capabilities", "GET", "access_capabilities",
              "tsh login: the roles the caller may request, suggested reviewers, request_access (always, reason: "
              "login requests the roles) and request_prompt", response=CapabilitiesReply, errors=AUTH_ERRORS),
    Operation("/v1/webapi/sites/{cluster}/certs/reissue", "POST", "reissue_certs",
              "tsh login --request-id, tsh request drop: the caller's certificates again with the roles of its "
              "approved access requests added, expiring with the access", body=ReissueBody, response=ReissueReply,
              max_body=SMALL_BODY, errors=AUTH_ERRORS),
]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the proxy web API, generated from :data:`ROUTES` and their models."""
    ops = [*ROUTES, Operation(OPENAPI_PATH, "GET", "openapi", "This document (OpenAPI 3.1)",
                              response=dict[str, Any], anonymous=True, errors=())]
    return schema.openapi_document(
        "teleport-py proxy web API", __version__, ops, PATH_PARAMS,
        description="HTTPS; the routes under /v1/webapi/sites need the client certificate of tsh login. "
                    "Errors are {\"error\": reason}; a 400 names the field.")
