"""Role ``where:`` predicates: the subset of Teleport's predicate language that rules use.

::

    rules:
      - resources: [session]
        verbs: [list, read]
        where: contains(session.participants, user.metadata.name)

Grammar (parsed by a tokenizer and a recursive descent parser, never ``eval``)::

    expr    := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!" unary | "(" expr ")" | call
    call    := ("contains" | "equals") "(" value "," value ")"
    value   := "..." (a string literal) | field
    field   := name ("." name)* ["[" "..." "]"]

``contains(list, string)`` is true when the list holds the string; ``equals(a, b)`` compares two
strings. Fields (:data:`FIELDS`) are strings or lists of strings; maps (traits, labels) must be
indexed with a string literal. Types are checked when the role loads, so a rule whose predicate
could never work is refused then, with the position of the mistake. Expressions are at most
:data:`MAX_LENGTH` characters, :data:`MAX_TOKENS` tokens and :data:`MAX_DEPTH` levels deep.

Evaluation reads an environment (:func:`environment`): a missing field is empty (``""`` or no
items), so a predicate about an item the request does not carry is false (``contains``,
``equals`` of a non-empty value) unless negated.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from teleport_core.suggest import did_you_mean

MAX_LENGTH = 1024
MAX_TOKENS = 256
MAX_DEPTH = 16
FUNCTIONS = ("contains", "equals")


class Type(enum.Enum):
    STRING = "a string"
    LIST = "a list"
    STRING_MAP = "a map of strings"
    LIST_MAP = "a map of lists"


#: The fields a predicate may read and their types.
FIELDS: Mapping[str, Type] = {
    "user.metadata.name": Type.STRING,
    "user.spec.roles": Type.LIST,
    "user.spec.traits": Type.LIST_MAP,
    "resource.metadata.name": Type.STRING,
    "resource.metadata.labels": Type.STRING_MAP,
    "session.participants": Type.LIST,
    "session.user": Type.STRING,
    "session.login": Type.STRING,
    "session.server_id": Type.STRING,
    "event.type": Type.STRING,
    "event.code": Type.STRING,
    "event.user": Type.STRING,
    # a live session's tracker (Teleport's RFD 82 names), for rules on session_tracker
    "tracker.session_id": Type.STRING,
    "tracker.kind": Type.STRING,
    "tracker.participants": Type.LIST,
    "tracker.state": Type.STRING,
    "tracker.hostname": Type.STRING,
    "tracker.address": Type.STRING,
    "tracker.login": Type.STRING,
    "tracker.cluster": Type.STRING,
    "tracker.host_user": Type.STRING,
    "tracker.host_roles": Type.LIST,
}

#: The fields of a ``require_session_join`` filter (Teleport's names: the participant's).
FILTER_FIELDS: Mapping[str, Type] = {
    "user.name": Type.STRING,
    "user.roles": Type.LIST,
    "user.traits": Type.LIST_MAP,
}
#: Namespaces that describe one kind of item: a rule using them must name only these resources.
ITEM_KINDS: Mapping[str, tuple[str, ...]] = {"session": ("session",), "event": ("event",),
                                              "tracker": ("session_tracker",)}


class PredicateError(ValueError):
    """An invalid expression: ``str()`` says what is wrong and at which character (1-based)."""

    def __init__(self, reason: str, position: int | None = None) -> None:
        self.reason = reason
        self.position = position
        super().__init__(f"{reason} at character {position + 1}" if position is not None else reason)


# -- tokens ----------------------------------------------------------------------------------------

_PUNCT = {"&&": "&&", "||": "||", "!": "!", "(": "(", ")": ")", ",": ",", ".": ".", "[": "[", "]": "]"}
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


@attrs.frozen
class Token:
    kind: str  # "name", "string", a punctuation mark, or "end"
    text: str
    position: int


def _is_name_start(ch: str) -> bool:
    return ch == "_" or ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def _is_name_char(ch: str) -> bool:
    return _is_name_start(ch) or ("0" <= ch <= "9")


def _string(text: str, start: int) -> tuple[str, int]:
    """The string literal opening at ``start`` (a double quote): its value and the index after it."""
    out: list[str] = []
    i = start + 1
    while i < len(text):
        ch = text[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            escaped = text[i + 1] if i + 1 < len(text) else ""
            if escaped not in _ESCAPES:
                raise PredicateError(f"invalid escape \\{escaped} in a string (use \\\" \\\\ \\n \\t)", i)
            out.append(_ESCAPES[escaped])
            i += 2
            continue
        if ch < " " or ch == "\x7f":
            raise PredicateError("control character in a string", i)
        out.append(ch)
        i += 1
    raise PredicateError("unterminated string", start)


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, ending with an ``end`` token; :class:`PredicateError` on a bad one."""
    tokens: list[Token] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t\r\n":
            i += 1
            continue
        if len(tokens) >= MAX_TOKENS:
            raise PredicateError(f"expression too long: at most {MAX_TOKENS} tokens", i)
        if _is_name_start(ch):
            j = i + 1
            while j < len(text) and _is_name_char(text[j]):
                j += 1
            tokens.append(Token("name", text[i:j], i))
            i = j
        elif ch == '"':
            value, j = _string(text, i)
            tokens.append(Token("string", value, i))
            i = j
        elif text.startswith(("&&", "||"), i):
            tokens.append(Token(text[i:i + 2], text[i:i + 2], i))
            i += 2
        elif ch in _PUNCT:
            tokens.append(Token(ch, ch, i))
            i += 1
        elif ch == "'":
            raise PredicateError("strings are written in double quotes", i)
        elif ch in "&|":
            raise PredicateError(f'unexpected "{ch}" (and is "&&", or is "||")', i)
        else:
            raise PredicateError(f"unexpected character {json.dumps(ch)}", i)
    tokens.append(Token("end", "", len(text)))
    return tokens


# -- the syntax tree -------------------------------------------------------------------------------

Env = Mapping[str, Any]


@attrs.frozen
class Literal:
    value: str

    def value_in(self, env: Env) -> str:
        return self.value


@attrs.frozen
class Field:
    name: str  # a key of FIELDS or FILTER_FIELDS
    key: str | None = None  # the index of a map field

    @property
    def type(self) -> Type:
        kind = FIELDS.get(self.name) or FILTER_FIELDS[self.name]
        if kind is Type.STRING_MAP:
            return Type.STRING
        if kind is Type.LIST_MAP:
            return Type.LIST
        return kind

    def value_in(self, env: Env) -> str | tuple[str, ...]:
        raw = env.get(self.name)
        if self.key is not None:
            raw = raw.get(self.key) if isinstance(raw, Mapping) else None
        if self.type is Type.STRING:
            return raw if isinstance(raw, str) else ""
        if isinstance(raw, str):
            return (raw,)
        if isinstance(raw, Iterable) and not isinstance(raw, Mapping | bytes):
            return tuple(item for item in raw if isinstance(item, str))
        return ()

    def __str__(self) -> str:
        return self.name if self.key is None else f"{self.name}[{json.dumps(self.key)}]"


Value = Literal | Field


@attrs.frozen
class Call:
    function: str
    left: Value
    right: Value

    def holds(self, env: Env) -> bool:
        left, right = self.left.value_in(env), self.right.value_in(env)
        if self.function == "contains":
            return isinstance(left, tuple) and isinstance(right, str) and right in left
        return isinstance(left, str) and isinstance(right, str) and left == right


@attrs.frozen
class Not:
    operand: Node

    def holds(self, env: Env) -> bool:
        return not self.operand.holds(env)


@attrs.frozen
class All:
    operands: tuple[Node, ...]

    def holds(self, env: Env) -> bool:
        return all(operand.holds(env) for operand in self.operands)


@attrs.frozen
class Any_:
    operands: tuple[Node, ...]

    def holds(self, env: Env) -> bool:
        return any(operand.holds(env) for operand in self.operands)


Node = Call | Not | All | Any_


# -- the parser ------------------------------------------------------------------------------------


def _describe(token: Token) -> str:
    if token.kind == "end":
        return "the end of the expression"
    if token.kind == "string":
        return f"the string {json.dumps(token.text)}"
    return json.dumps(token.text)


class _Parser:
    def __init__(self, tokens: Sequence[Token], known: Mapping[str, Type]) -> None:
        self.tokens = tokens
        self.known = known
        self.index = 0
        self.fields: set[str] = set()

    @property
    def token(self) -> Token:
        return self.tokens[self.index]

    def take(self, kind: str, expected: str) -> Token:
        token = self.token
        if token.kind != kind:
            raise PredicateError(f"expected {expected}, got {_describe(token)}", token.position)
        self.index += 1
        return token

    def expression(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise PredicateError(f"nested too deeply (at most {MAX_DEPTH} levels)", self.token.position)
        operands = [self.conjunction(depth)]
        while self.token.kind == "||":
            self.index += 1
            operands.append(self.conjunction(depth))
        return operands[0] if len(operands) == 1 else Any_(tuple(operands))

    def conjunction(self, depth: int) -> Node:
        operands = [self.unary(depth)]
        while self.token.kind == "&&":
            self.index += 1
            operands.append(self.unary(depth))
        return operands[0] if len(operands) == 1 else All(tuple(operands))

    def unary(self, depth: int) -> Node:
        token = self.token
        if depth > MAX_DEPTH:
            raise PredicateError(f"nested too deeply (at most {MAX_DEPTH} levels)", token.position)
        if token.kind == "!":
            self.index += 1
            return Not(self.unary(depth + 1))
        if token.kind == "(":
            self.index += 1
            inner = self.expression(depth + 1)
            self.take(")", '")"')
            return inner
        if token.kind == "name" and token.text in FUNCTIONS:
            return self.call()
        if token.kind == "name":
            following = self.tokens[self.index + 1]
            if following.kind == "(":
                raise PredicateError(f'unknown function "{token.text}": expected contains or equals',
                                     token.position)
            raise PredicateError(f'expected a condition such as contains(...) or equals(...), got "{token.text}" '
                                 "(fields are the arguments of contains and equals)", token.position)
        raise PredicateError(f"expected a condition such as contains(...) or equals(...), got {_describe(token)}",
                             token.position)

    def call(self) -> Call:
        name = self.take("name", "a function")
        self.take("(", f'"(" after {name.text}')
        left_at = self.token.position
        left = self.value()
        self.take(",", f'"," between the two arguments of {name.text}')
        right_at = self.token.position
        right = self.value()
        self.take(")", f'")" after the two arguments of {name.text}')
        left_type = left.type if isinstance(left, Field) else Type.STRING
        right_type = right.type if isinstance(right, Field) else Type.STRING
        if name.text == "contains":
            if left_type is not Type.LIST:
                raise PredicateError(f"contains needs a list as its first argument (such as session.participants), "
                                     f"got {_show(left)}, {left_type.value}", left_at)
            if right_type is not Type.STRING:
                raise PredicateError(f"contains needs a string as its second argument, got {_show(right)}, "
                                     f"{right_type.value}", right_at)
        else:
            for value, kind, at in ((left, left_type, left_at), (right, right_type, right_at)):
                if kind is not Type.STRING:
                    raise PredicateError(f"equals compares strings, got {_show(value)}, {kind.value} "
                                         "(use contains for a list)", at)
        return Call(name.text, left, right)

    def value(self) -> Value:
        token = self.token
        if token.kind == "string":
            self.index += 1
            return Literal(token.text)
        if token.kind != "name":
            raise PredicateError(f"expected a field or a string, got {_describe(token)}", token.position)
        parts = [self.take("name", "a field").text]
        while self.token.kind == ".":
            self.index += 1
            parts.append(self.take("name", "a field name after \".\"").text)
        name = ".".join(parts)
        if name not in self.known:
            raise PredicateError(f'unknown field "{name}"' + _suggest_field(parts, self.known), token.position)
        key: str | None = None
        if self.token.kind == "[":
            if self.known[name] not in (Type.STRING_MAP, Type.LIST_MAP):
                raise PredicateError(f'"{name}" is {self.known[name].value}, not a map: it takes no ["..."]',
                                     self.token.position)
            self.index += 1
            key = self.take("string", 'a string key in ["..."]').text
            self.take("]", '"]"')
        elif self.known[name] in (Type.STRING_MAP, Type.LIST_MAP):
            raise PredicateError(f'"{name}" is {self.known[name].value}: pick one with {name}["key"]', token.position)
        self.fields.add(name)
        return Field(name, key)


def _suggest_field(parts: Sequence[str], known: Mapping[str, Type]) -> str:
    """A close field name (``user.name`` -> ``user.metadata.name``), else the list of fields."""
    same_end = [f for f in known if f.split(".")[0] == parts[0] and f.split(".")[-1] == parts[-1]]
    if len(same_end) == 1:
        return f' (did you mean "{same_end[0]}"?)'
    return did_you_mean(".".join(parts), list(known)).replace("valid keys", "known fields")


def _show(value: Value) -> str:
    return json.dumps(value.value) if isinstance(value, Literal) else str(value)


@attrs.frozen
class Predicate:
    """A parsed ``where:`` expression; call it with an environment (:func:`environment`)."""

    text: str
    root: Node = attrs.field(repr=False)
    fields: frozenset[str] = attrs.field(repr=False)

    @property
    def namespaces(self) -> frozenset[str]:
        """The first part of each field the expression reads (``user``, ``session`` ...)."""
        return frozenset(name.partition(".")[0] for name in self.fields)

    def __call__(self, env: Env) -> bool:
        return self.root.holds(env)


def parse(text: str, fields: Mapping[str, Type] = FIELDS) -> Predicate:
    """Parse a ``where:`` expression (or, with ``fields`` :data:`FILTER_FIELDS`, a
    ``require_session_join`` filter); :class:`PredicateError` says what is wrong and where."""
    if not isinstance(text, str):
        raise PredicateError(f"expected an expression in a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise PredicateError(f"expression too long: {len(text)} characters, at most {MAX_LENGTH}")
    if not text.strip():
        raise PredicateError("empty expression: write a condition such as "
                             "contains(session.participants, user.metadata.name), or remove where")
    parser = _Parser(tokenize(text), fields)
    root = parser.expression(1)
    if parser.token.kind != "end":
        raise PredicateError(f"unexpected {_describe(parser.token)} after a complete condition "
                             '(join conditions with "&&" or "||")', parser.token.position)
    return Predicate(text, root, frozenset(parser.fields))


def environment(*, user: str = "", roles: Iterable[str] = (), traits: Mapping[str, Iterable[str]] | None = None,
                name: str = "", labels: Mapping[str, str] | None = None,
                item: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The fields of one access request: the user's, the resource's ``name`` and ``labels``, and
    the item's by namespace (``{"session": {"participants": [...], "login": ...}}``)."""
    env: dict[str, Any] = {
        "user.metadata.name": user,
        "user.spec.roles": tuple(roles),
        "user.spec.traits": {k: tuple(v) for k, v in (traits or {}).items()},
        "user.name": user,
        "user.roles": tuple(roles),
        "user.traits": {k: tuple(v) for k, v in (traits or {}).items()},
        "resource.metadata.name": name,
        "resource.metadata.labels": dict(labels or {}),
    }
    for namespace, fields in (item or {}).items():
        if namespace not in ITEM_KINDS or not isinstance(fields, Mapping):
            continue
        for field, value in fields.items():
            key = f"{namespace}.{field}"
            if key in FIELDS:
                env[key] = value
    return env
