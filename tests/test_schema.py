"""teleport_core.api.schema: the messages of refused input, JSON depth, body limits, the generated document."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import pytest
from pydantic import Field

from teleport_core.api.schema import (
    MAX_DEPTH,
    Body,
    InvalidRequest,
    JSONObject,
    Name,
    NameList,
    Operation,
    PayloadTooLarge,
    Query,
    Reply,
    json_depth,
    openapi_document,
    read_body,
    validate_body,
    validate_path,
    validate_query,
)


class Sample(Body):
    name: Name
    roles: NameList = []
    spec: JSONObject = {}
    force: bool = False


class SampleQuery(Query):
    limit: int = Field(10, ge=1, le=100)
    type: Annotated[list[str], Field(max_length=3)] = []


@pytest.mark.parametrize(("raw", "message"), [
    (b'{"roles": []}', "name: required"),
    (b'{"name": 5}', "name: expected a string"),
    (b'{"name": ""}', "name: must not be empty"),
    (b'{"name": "' + b"n" * 254 + b'"}', "name: at most 253 characters"),
    (b'{"name": "a\\u0085b"}', "name: control characters are not allowed"),  # C1 too
    (b'{"name": "x", "roles": ["ok", "b\\tad"]}', "roles[1]: control characters are not allowed"),
    (b'{"name": "x", "force": 1}', "force: expected true or false"),
    (b'{"name": "x", "spec": []}', "spec: expected an object"),
    (b"[]", "request body must be a JSON object"),
    (b"{", "request body is not JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
    (b"[" * 100_000, "request body is nested too deeply"),
    (b'{"name": "x", "spec": {"k": ["\\udc00"]}}', "request body is not valid Unicode: a string has a lone surrogate (\\udXXX)"),
    (b'{"name": "x", "spec": ' + b'{"a": ' * MAX_DEPTH + b"1" + b"}" * MAX_DEPTH + b"}",
     "request body is nested too deeply"),
])
def test_refusals_name_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_body(Sample, raw)
    assert str(err.value) == message


def test_valid_body_and_defaults() -> None:
    with pytest.raises(InvalidRequest, match="^name: required$"):
        validate_body(Sample, b"")  # an empty body is {}
    body = validate_body(Sample, b'{"name": "joe", "roles": ["access"], "extra": 1}')
    assert body.name == "joe" and body.roles == ["access"] and not body.force  # unknown fields ignored


def test_json_depth_is_iterative() -> None:
    deep: Any = 1
    for _ in range(200_000):
        deep = [deep]
    assert json_depth(deep) == 200_000
    assert json_depth({"a": [1, {"b": 2}]}) == 3 and json_depth("x") == 0


class FakeParams(dict[str, list[str]]):
    def getlist(self, key: str) -> list[str]:
        return self[key]


def test_query_and_path() -> None:
    assert validate_query(SampleQuery, FakeParams(limit=["5"], type=["a", "b"])) == SampleQuery(limit=5, type=["a", "b"])
    for params, message in [(FakeParams(limit=["x"]), "limit: expected an integer"),
                            (FakeParams(limit=["0"]), "limit: at least 1"),
                            (FakeParams(type=["a"] * 4), "type: at most 3 items")]:
        with pytest.raises(InvalidRequest, match=f"^{message}$"):
            validate_query(SampleQuery, params)
    validate_path({"name": Name}, {"name": "ok", "other": "\x00"})  # only typed parameters are checked
    with pytest.raises(InvalidRequest, match="^name: control characters are not allowed$"):
        validate_path({"name": Name}, {"name": "a\x00"})


class FakeRequest:
    def __init__(self, chunks: list[bytes], length: str = "") -> None:
        self.headers = {"content-length": length} if length else {}
        self.chunks = chunks
        self.read = 0

    async def stream(self) -> Any:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def test_read_body_stops_at_the_limit() -> None:
    assert asyncio.run(read_body(FakeRequest([b"ab", b"cd"]), 4)) == b"abcd"
    declared = FakeRequest([b"x" * 10], length="10")
    with pytest.raises(PayloadTooLarge, match="over 4 bytes"):
        asyncio.run(read_body(declared, 4))
    assert declared.read == 0  # refused from Content-Length, before reading
    chunked = FakeRequest([b"xxx", b"xxx", b"xxx"])
    with pytest.raises(PayloadTooLarge):
        asyncio.run(read_body(chunked, 4))
    assert chunked.read == 2  # refused as soon as it passed the limit


class Answer(Reply):
    ok: bool


def test_document_declares_parameters_bodies_and_errors() -> None:
    ops = [Operation("/v1/things/{name}", "PUT", "put_thing", "Put", body=Sample, query=SampleQuery, response=Answer),
           Operation("/v1/ping", "GET", "ping", "Ping", response=Answer, anonymous=True, errors=())]
    doc = openapi_document("t", "1", ops, {"name": Name})
    put = doc["paths"]["/v1/things/{name}"]["put"]
    assert [(p["in"], p["name"]) for p in put["parameters"]] == [("path", "name"), ("query", "limit"), ("query", "type")]
    assert put["parameters"][0]["schema"]["maxLength"] == 253
    assert put["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Sample"}
    assert set(put["responses"]) == {"200", "400", "401", "403", "404", "409", "412", "413"}
    assert put["security"] == [{"mutualTLS": []}]
    ping = doc["paths"]["/v1/ping"]["get"]
    assert set(ping["responses"]) == {"200", "400", "413"} and "security" not in ping
    assert doc["components"]["schemas"]["Sample"]["properties"]["roles"]["maxItems"] == 256
    pytest.importorskip("openapi_spec_validator").validate(doc)
