"""Typed bodies for the HTTP APIs (the auth API, the proxy's web API): pydantic v2 models.

Every request body, query string and path parameter is validated against a model before a
handler runs, and every response body has one; the OpenAPI document (:func:`openapi_document`)
is generated from the same models, so what is published is what is checked.

Why pydantic v2: it is maintained and fast (a Rust core), its models produce JSON Schema
2020-12 (the schema dialect of OpenAPI 3.1) without a second description, strict mode refuses
coercions (``"1"`` is not an integer, ``1`` is not a string), and the limits we need are
declared constraints (lengths, patterns, item counts) that appear in the schema too.

Limits, for everything an HTTP caller sends: names are 1..253 characters without control
characters (:data:`Name`); public keys at most 16 KiB; passwords at most 128 characters; lists,
label and trait maps have item caps; a JSON body nests at most :data:`MAX_DEPTH` levels.
A refusal is :class:`InvalidRequest` (a 400) with the message ``"<field>: <reason>"``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import attrs
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from teleport_core.errors import TeleportError

#: no C0/C1 control characters and no DEL: names end up in logs, audit events, terminals and file names
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: a JSON body (or a free-form object inside one) nests at most this deep
MAX_DEPTH = 32
NAME_MAX = 253
PUBLIC_KEY_MAX = 16 * 1024
PASSWORD_MAX = 128
LIST_MAX = 256
MAP_MAX = 128
TEXT_MAX = 1024
MESSAGE_MAX = 4096

M = TypeVar("M", bound=BaseModel)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class InvalidRequest(TeleportError):
    """A request (body, query or path) that is not what the route takes: a 400."""


class PayloadTooLarge(TeleportError):
    """A request body over the route's limit: a 413."""


Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=NO_CONTROL)]
"""A resource name (user, role, lock, node, host UUID ...): 1..253 characters, no control characters."""
OptionalName = Annotated[str, StringConstraints(max_length=NAME_MAX, pattern=NO_CONTROL)]
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX, pattern=NO_CONTROL)]
"""A short single-line string: an address, a duration, a login, a label value."""
Message = Annotated[str, StringConstraints(max_length=MESSAGE_MAX)]
PublicKey = Annotated[str, StringConstraints(min_length=1, max_length=PUBLIC_KEY_MAX)]
"""An SSH public key line (``ssh-ed25519 AAAA...``) or a PEM public key."""
Password = Annotated[str, StringConstraints(min_length=1, max_length=PASSWORD_MAX)]
TokenText = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=NO_CONTROL)]
"""A secret token (join token, invite token): never logged."""
OTPCode = Annotated[str, StringConstraints(max_length=16, pattern=NO_CONTROL)]
Word = Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)]
"""A keyword (a phase, a mode, a kind); the handler names the allowed values in its refusal."""
Duration = Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)]
"""A Go-style duration (``30m``, ``1h0m0s``); "" for the default."""
Timestamp = Annotated[str, StringConstraints(max_length=64, pattern=NO_CONTROL)]
"""An RFC 3339 time; a time without a zone is UTC."""
NameList = Annotated[list[Name], Field(max_length=LIST_MAX)]
TextList = Annotated[list[Text], Field(max_length=LIST_MAX)]
LabelValue = Annotated[str, StringConstraints(max_length=TEXT_MAX)]
Labels = Annotated[dict[Name, LabelValue], Field(max_length=MAP_MAX)]
Traits = Annotated[dict[Name, TextList], Field(max_length=MAP_MAX)]


def json_depth(value: Any) -> int:
    """How deeply ``value`` (parsed JSON) nests: 0 for a scalar; iterative, so any depth is safe."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            items: Any = item.values()
        elif isinstance(item, list):
            items = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        stack.extend((child, depth + 1) for child in items)
    return deepest


def _shallow(value: dict[str, Any]) -> dict[str, Any]:
    if json_depth(value) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return value


JSONObject = Annotated[dict[str, Any], Field(max_length=MAP_MAX), AfterValidator(_shallow)]
"""A free-form JSON object (a role's spec, an event's fields), at most :data:`MAX_DEPTH` deep."""


class Body(BaseModel):
    """A request body: strict types (no coercion), unknown fields ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)


class Query(BaseModel):
    """A query string: values arrive as text, so numbers are parsed (lax mode); unknown parameters ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Reply(BaseModel):
    """A response body: documents what the server sends (extra fields allowed, for compatibility)."""

    model_config = ConfigDict(extra="allow")


class Error(Reply):
    """Every error response: ``{"error": reason}``."""

    error: str


_REASONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda ctx: "required",
    "string_type": lambda ctx: "expected a string",
    "string_unicode": lambda ctx: "expected valid Unicode text (no lone surrogates)",
    "bool_type": lambda ctx: "expected true or false",
    "int_type": lambda ctx: "expected an integer",
    "int_parsing": lambda ctx: "expected an integer",
    "float_type": lambda ctx: "expected a number",
    "float_parsing": lambda ctx: "expected a number",
    "finite_number": lambda ctx: "expected a finite number",
    "list_type": lambda ctx: "expected a list",
    "dict_type": lambda ctx: "expected an object",
    "model_type": lambda ctx: "expected an object",
    "model_attributes_type": lambda ctx: "expected an object",
    "string_too_long": lambda ctx: f"at most {ctx['max_length']} characters",
    "string_too_short": lambda ctx: "must not be empty" if ctx.get("min_length") == 1 else
    f"at least {ctx['min_length']} characters",
    "too_long": lambda ctx: f"at most {ctx['max_length']} items",
    "too_short": lambda ctx: f"at least {ctx['min_length']} items",
    "string_pattern_mismatch": lambda ctx: "control characters are not allowed" if ctx.get("pattern") == NO_CONTROL
    else f"must match {ctx.get('pattern')}",
    "literal_error": lambda ctx: f"expected {ctx.get('expected')}",
    "enum": lambda ctx: f"expected {ctx.get('expected')}",
    "greater_than_equal": lambda ctx: f"at least {ctx.get('ge')}",
    "less_than_equal": lambda ctx: f"at most {ctx.get('le')}",
    "value_error": lambda ctx: str(ctx.get("error", "invalid")),
    "assertion_error": lambda ctx: str(ctx.get("error", "invalid")),
}


def _loc_part(part: Any) -> str:
    """A key path part as it is echoed in a message: control characters and lone surrogates as ``?``."""
    text = _CONTROL.sub("?", str(part)).encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= 64 else text[:61] + "..."


def describe(error: ValidationError, prefix: str = "") -> str:
    """The first problem of a validation error as ``"<field>: <reason>"`` (``a.b[0]: at most 253 characters``)."""
    first = error.errors(include_url=False)[0]
    loc = prefix
    for part in first["loc"]:
        if isinstance(part, int):
            loc += f"[{part}]"
        elif part == "[key]":
            loc += " (key)"
        else:
            loc += f".{_loc_part(part)}" if loc else _loc_part(part)
    reason = _REASONS.get(first["type"])
    text = reason(first.get("ctx") or {}) if reason else first["msg"]
    return f"{loc}: {text}" if loc else text


def parse_json(raw: bytes) -> Any:
    """JSON from a request body; a 400 when it is not JSON or nests deeper than :data:`MAX_DEPTH`."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise InvalidRequest("request body is nested too deeply") from None
    except ValueError as exc:
        raise InvalidRequest(f"request body is not JSON: {exc}") from None
    if json_depth(data) > MAX_DEPTH:
        raise InvalidRequest("request body is nested too deeply")
    if not unicode_ok(data):
        raise InvalidRequest("request body is not valid Unicode: a string has a lone surrogate (\\udXXX)")
    return data


def unicode_ok(value: Any) -> bool:
    """Whether every string in ``value`` (parsed JSON, keys too) is valid Unicode: JSON's ``\\ud800``
    escapes decode to lone surrogates, which no UTF-8 answer, log or database can carry."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def validate_body(model: type[M], raw: bytes) -> M:
    """``raw`` (a request body; empty is ``{}``) as ``model``, or :class:`InvalidRequest`."""
    data = parse_json(raw) if raw.strip() else {}
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def validate_query(model: type[M], params: Any) -> M:
    """A starlette ``QueryParams`` as ``model``: a list field takes every value of a repeated parameter."""
    data: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key not in params:
            continue
        values = params.getlist(key)
        data[key] = values if _is_list(info.annotation) else values[-1]
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(describe(exc)) from None


def _is_list(annotation: Any) -> bool:
    return getattr(annotation, "__origin__", None) is list or "list[" in str(annotation)


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(kind: Any) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    return adapter


def validate_path(kinds: dict[str, Any], params: dict[str, Any]) -> None:
    """Check each path parameter against its type in ``kinds`` (:class:`InvalidRequest` naming it)."""
    for name, value in params.items():
        kind = kinds.get(name)
        if kind is None:
            continue
        try:
            _adapter(kind).validate_python(value, strict=True)
        except ValidationError as exc:
            raise InvalidRequest(describe(exc, name)) from None


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with :class:`PayloadTooLarge` as soon as it passes ``limit`` bytes
    (from ``Content-Length``, or while reading a chunked body): never more than ``limit`` is held."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- the OpenAPI document -----------------------------------------------------------------------------

ERROR_STATUSES = {
    "400": "The request is not what the route takes (body, query or path): the reason names the field",
    "401": "No client certificate, or not one of the cluster's",
    "403": "Access denied (audited)",
    "404": "Not found",
    "409": "Already exists",
    "412": "A condition failed (a concurrent change)",
    "413": "Request body over the route's limit",
    "429": "Too many attempts from this address: retry after the Retry-After header's seconds",
    "502": "The auth server could not be reached",
    "503": "The audit log cannot record events (audit log unavailable: ...): nothing was changed",
}


@attrs.frozen
class Operation:
    """One route: what the app, the OpenAPI document and the listener limits are built from."""

    path: str
    method: str
    handler: str
    summary: str
    #: the request body (JSON), or None when the route takes none
    body: type[BaseModel] | None = None
    #: the query string, or None
    query: type[BaseModel] | None = None
    #: the 200 response (a model, a ``list[Model]``, ...), or None for a non-JSON answer (:attr:`media`)
    response: Any = None
    #: the largest request body this route takes (bytes); the HTTP listener may enforce it before reading
    max_body: int = 1 << 20
    #: True: no client certificate needed
    anonymous: bool = False
    #: the media type of a non-JSON request body (a recording upload) or response
    media: str = ""
    #: error statuses this route may answer (besides 400 and 413, which every route may)
    errors: tuple[str, ...] = ("401", "403", "404", "409", "412")
    #: the success status; 204 has no body
    status: int = 200


def openapi_document(title: str, version: str, operations: list[Operation], path_params: dict[str, Any],
                     description: str = "", mutual_tls: bool = True) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``operations``: paths, path and query parameters, request and
    response bodies (JSON Schema 2020-12 from the models), error responses."""
    components: dict[str, Any] = {"Error": Error.model_json_schema(ref_template="#/components/schemas/{model}")}
    defs_ref = "#/components/schemas/{model}"

    def schema(kind: Any, mode: str) -> dict[str, Any]:
        out = _adapter(kind).json_schema(ref_template=defs_ref, mode=mode)  # type: ignore[arg-type]
        components.update(out.pop("$defs", {}))
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            components[kind.__name__] = out
            return {"$ref": defs_ref.format(model=kind.__name__)}
        return out

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        parameters: list[dict[str, Any]] = []
        for name in re.findall(r"{(\w+)}", op.path):
            parameters.append({"name": name, "in": "path", "required": True,
                               "schema": schema(path_params.get(name, str), "validation")})
        if op.query is not None:
            for name, info in op.query.model_fields.items():
                field_schema = schema(info.annotation, "validation")
                if info.metadata:
                    field_schema = _adapter(Annotated[(info.annotation, *info.metadata)]).json_schema(
                        ref_template=defs_ref)
                param: dict[str, Any] = {"name": info.alias or name, "in": "query", "required": info.is_required(),
                                         "schema": field_schema}
                if info.description:
                    param["description"] = info.description
                if _is_list(info.annotation):
                    param.update(style="form", explode=True)
                parameters.append(param)
        entry: dict[str, Any] = {"operationId": op.handler, "summary": op.summary}
        if parameters:
            entry["parameters"] = parameters
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {"application/json": {
                "schema": schema(op.body, "validation")}}}
        elif op.media and op.method in ("PUT", "POST"):
            entry["requestBody"] = {"required": True, "content": {op.media: {
                "schema": {"type": "string", "format": "binary", "maxLength": op.max_body}}}}
        if op.response is not None:
            ok = {"description": "OK",
                  "content": {"application/json": {"schema": schema(op.response, "serialization")}}}
        else:
            ok = {"description": "OK", "content": {op.media or "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"}}}}
        if op.status == 204:
            ok = {"description": "No content"}
        responses: dict[str, Any] = {str(op.status): ok}
        for status in sorted({"400", "413", *op.errors}):
            responses[status] = {"$ref": f"#/components/responses/E{status}"}
            if op.media == "text/html":  # a page tells its errors in a page
                responses[status] = {"description": ERROR_STATUSES[status],
                                     "content": {"text/html": {"schema": {"type": "string"}}}}
        entry["responses"] = responses
        if mutual_tls and not op.anonymous:
            entry["security"] = [{"mutualTLS": []}]
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    error_content = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, **({"description": description} if description else {})},
        "paths": paths,
        "components": {
            "schemas": components,
            "responses": {f"E{status}": {"description": text, "content": error_content}
                          for status, text in ERROR_STATUSES.items()},
        },
    }
    if mutual_tls:
        document["components"]["securitySchemes"] = {"mutualTLS": {
            "type": "mutualTLS", "description": "A client certificate from the cluster's user or host CA"}}
    return document
