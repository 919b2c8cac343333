"""Parsing of ``s3://bucket/prefix?region=...&endpoint=...`` session-storage URIs.

The query parameters are Teleport's (``region``, ``endpoint``, ``insecure``, ``disablesse``,
``sse_kms_key``, ``acl``, ``use_fips_endpoint``) plus ours, ``path_style``. Unknown parameters
are refused (Teleport ignores them) so that a typo does not silently drop, say, encryption.
Credentials are never taken from the URI: they come from the standard AWS chain.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

import attrs

from teleport_core.errors import ConfigError

CONFIG_KEY = "teleport.storage.audit_sessions_uri"

#: S3's canned ACLs (the ones Teleport accepts for ``acl=``).
CANNED_ACLS = frozenset(
    {
        "private",
        "public-read",
        "public-read-write",
        "aws-exec-read",
        "authenticated-read",
        "bucket-owner-read",
        "bucket-owner-full-control",
        "log-delivery-write",
    }
)

KNOWN_PARAMS = ("region", "endpoint", "insecure", "disablesse", "sse_kms_key", "acl", "use_fips_endpoint", "path_style")

# Go's strconv.ParseBool, which Teleport uses for its boolean parameters.
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REGION = re.compile(r"^[a-z0-9-]{1,40}$")
_IPV4 = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


@attrs.frozen
class S3Location:
    """Everything an ``s3://`` session-storage URI says (see the module docstring)."""

    bucket: str
    prefix: str
    region: str | None = None
    endpoint: str | None = None
    insecure: bool = False
    disable_sse: bool = False
    sse_kms_key: str | None = None
    acl: str | None = None
    use_fips_endpoint: bool | None = None
    path_style: bool = False

    @property
    def display(self) -> str:
        """``s3://bucket/prefix`` plus the endpoint, for messages (never credentials: there are none)."""
        where = f"s3://{self.bucket}/{self.prefix}"
        return f"{where} at {self.endpoint}" if self.endpoint else where

    @property
    def sse_args(self) -> dict[str, str]:
        """The server-side-encryption arguments of PutObject and CreateMultipartUpload."""
        if self.disable_sse:
            return {}
        if self.sse_kms_key:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self.sse_kms_key}
        return {"ServerSideEncryption": "AES256"}


def _bool(uri: str, name: str, value: str) -> bool:
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(CONFIG_KEY, f"{name}={value!r} in {uri!r}: expected true or false")


def parse_uri(uri: str) -> S3Location:
    """Parse an ``s3://`` URI; :class:`ConfigError` naming the problem for anything unusable."""
    example = "expected s3://bucket/optional/prefix?region=...&endpoint=..."
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(CONFIG_KEY, f"{example}, got {uri!r}: {exc}") from None
    if parts.scheme != "s3":
        raise ConfigError(CONFIG_KEY, f"{example}, got scheme {parts.scheme!r} in {uri!r}")
    if "@" in parts.netloc:
        raise ConfigError(
            CONFIG_KEY,
            f"{uri!r} has user information before the bucket: S3 credentials are never put in the URI, "
            "they come from the standard AWS chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "~/.aws/credentials, an instance or task role)",
        )
    if port is not None or ":" in parts.netloc:
        raise ConfigError(CONFIG_KEY, f"{uri!r}: the host part is the bucket name and takes no port; use endpoint=")
    bucket = parts.netloc
    if not bucket:
        raise ConfigError(CONFIG_KEY, f"{example}: {uri!r} names no bucket")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4.match(bucket):
        raise ConfigError(
            CONFIG_KEY,
            f"{bucket!r} in {uri!r} is not a valid S3 bucket name "
            "(3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit)",
        )
    if parts.fragment or uri.endswith("#"):
        raise ConfigError(CONFIG_KEY, f"{uri!r} has a fragment ('#...'), which S3 URIs do not take")
    prefix = parts.path.strip("/")
    if "//" in prefix or any(seg in (".", "..") for seg in prefix.split("/")) or "\x00" in prefix:
        raise ConfigError(CONFIG_KEY, f"the prefix {parts.path!r} in {uri!r} has empty, '.' or '..' segments")

    params: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigError(CONFIG_KEY, f"cannot parse the query of {uri!r}: {exc}") from None
    for name, value in pairs:
        if name not in KNOWN_PARAMS:
            raise ConfigError(CONFIG_KEY, f"unknown parameter {name!r} in {uri!r}; known: {', '.join(KNOWN_PARAMS)}")
        if name in params:
            raise ConfigError(CONFIG_KEY, f"parameter {name!r} is given twice in {uri!r}")
        if not value:
            raise ConfigError(CONFIG_KEY, f"parameter {name!r} in {uri!r} has no value")
        params[name] = value

    region = params.get("region")
    if region is not None and not _REGION.match(region):
        raise ConfigError(CONFIG_KEY, f"region={region!r} in {uri!r} is not an AWS region name (like us-east-1)")
    insecure_given = "insecure" in params
    insecure = _bool(uri, "insecure", params["insecure"]) if insecure_given else False
    disable_sse = _bool(uri, "disablesse", params["disablesse"]) if "disablesse" in params else False
    fips = _bool(uri, "use_fips_endpoint", params["use_fips_endpoint"]) if "use_fips_endpoint" in params else None
    sse_kms_key = params.get("sse_kms_key")
    if sse_kms_key and disable_sse:
        raise ConfigError(CONFIG_KEY, f"{uri!r} sets both sse_kms_key and disablesse=true; choose one")
    acl = params.get("acl")
    if acl is not None and acl not in CANNED_ACLS:
        raise ConfigError(
            CONFIG_KEY, f"acl={acl!r} in {uri!r} is not a canned ACL; one of {', '.join(sorted(CANNED_ACLS))}"
        )

    endpoint = params.get("endpoint")
    if endpoint is not None:
        endpoint = _endpoint(uri, endpoint, insecure, insecure_given)
    path_style = _bool(uri, "path_style", params["path_style"]) if "path_style" in params else endpoint is not None
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        region=region,
        endpoint=endpoint,
        insecure=insecure,
        disable_sse=disable_sse,
        sse_kms_key=sse_kms_key,
        acl=acl,
        use_fips_endpoint=fips,
        path_style=path_style,
    )


def _endpoint(uri: str, endpoint: str, insecure: bool, insecure_given: bool) -> str:
    """Normalise ``endpoint=`` to ``scheme://host[:port]``: a bare host gets https, or http with insecure=true."""
    if "://" not in endpoint:
        endpoint = ("http://" if insecure else "https://") + endpoint
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - validates the port
    except ValueError as exc:
        raise ConfigError(CONFIG_KEY, f"endpoint={endpoint!r} in {uri!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(CONFIG_KEY, f"endpoint={endpoint!r} in {uri!r}: expected http(s)://host[:port]")
    if parts.username or parts.password:
        raise ConfigError(CONFIG_KEY, f"the endpoint in {uri!r} carries credentials; use the standard AWS chain")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise ConfigError(CONFIG_KEY, f"endpoint={endpoint!r} in {uri!r}: expected http(s)://host[:port], no path")
    if parts.scheme == "http" and not insecure:
        raise ConfigError(
            CONFIG_KEY,
            f"endpoint {endpoint!r} in {uri!r} is plain HTTP: add insecure=true to allow recordings over HTTP",
        )
    if parts.scheme == "https" and insecure and insecure_given:
        raise ConfigError(CONFIG_KEY, f"{uri!r} sets insecure=true but the endpoint {endpoint!r} is https")
    return f"{parts.scheme}://{parts.netloc}"
