"""Credentials on disk: a private key with its TLS and SSH certificates and the cluster's CAs.

One :class:`LocalIdentity` is what a server keeps in ``data_dir`` after joining (and what
``tctl`` on the auth host uses), what ``tctl auth sign`` writes as an identity file, and
what ``tsh login`` keeps in its profile. Private keys are written 0600, atomically.

Identity file format (as Teleport's ``--format=file``): the private key PEM, the SSH
certificate line, the TLS certificate PEM, the trusted TLS CA certificates, then
``@cert-authority`` known_hosts lines for the host CA.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from pathlib import Path

import attrs

from teleport_core.errors import TeleportError
from teleport_core.files import write_private

_PEM_BLOCK = re.compile(
    r"-----BEGIN (?P<kind>[A-Z0-9 ]+)-----\r?\n.*?-----END (?P=kind)-----\r?\n?", re.DOTALL
)
_SSH_CERT = re.compile(r"^(\S+-cert-v01@openssh\.com \S+)(?: .*)?$", re.MULTILINE)


class IdentityError(TeleportError):
    """An identity file or directory is missing, unreadable or malformed."""


@attrs.frozen(repr=False)
class LocalIdentity:
    """A key and its certificates. ``repr`` never shows the key."""

    key_pem: bytes
    tls_cert_pem: bytes
    tls_ca_pems: tuple[bytes, ...]
    ssh_cert: str = ""  # "<type>-cert-v01@openssh.com AAAA..."
    known_hosts: tuple[str, ...] = ()  # "@cert-authority ..." lines for the host CA
    host_uuid: str = ""

    def __repr__(self) -> str:
        return f"LocalIdentity(host_uuid={self.host_uuid!r}, ssh_cert={bool(self.ssh_cert)})"

    # -- TLS ---------------------------------------------------------------------------------------

    def _load_into(self, context: ssl.SSLContext) -> None:
        # ssl wants files for the key pair; keep them in a private temporary directory briefly
        with tempfile.TemporaryDirectory(prefix="teleport-id-") as tmp:
            cert_path, key_path = Path(tmp) / "cert.pem", Path(tmp) / "key.pem"
            write_private(cert_path, self.tls_cert_pem)
            write_private(key_path, self.key_pem)
            context.load_cert_chain(cert_path, key_path)
        context.load_verify_locations(cadata=b"".join(self.tls_ca_pems).decode())

    def client_context(self, *, server_name_check: bool = True) -> ssl.SSLContext:
        """A TLS client context presenting this identity and trusting only the cluster's CAs."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = server_name_check
        context.verify_mode = ssl.CERT_REQUIRED
        self._load_into(context)
        return context

    def server_context(self, *, require_client_cert: bool = False) -> ssl.SSLContext:
        """A TLS server context with this identity's certificate, verifying client certificates
        against the cluster's CAs (optional unless ``require_client_cert``)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        self._load_into(context)
        return context

    # -- storage -------------------------------------------------------------------------------------

    def save(self, directory: Path) -> None:
        """Write to ``directory`` (0700, files 0600): ``identity`` (everything in one identity
        file, replaced atomically: what :meth:`load` reads, so a reader never sees a key from one
        issue with a certificate from another), plus ``key``, ``tls.crt``, ``ca.pem``,
        ``ssh-cert.pub``, ``known_hosts`` and ``host_uuid`` for people and OpenSSH."""
        for folder in (*reversed(directory.parents[:2]), directory):  # e.g. data_dir/keys/<role>
            folder.mkdir(exist_ok=True, mode=0o700)
        os.chmod(directory.parent, 0o700)
        os.chmod(directory, 0o700)
        write_private(directory / "tls.crt", self.tls_cert_pem)
        write_private(directory / "ca.pem", b"".join(self.tls_ca_pems))
        write_private(directory / "ssh-cert.pub", (self.ssh_cert + "\n") if self.ssh_cert else "")
        write_private(directory / "known_hosts", "".join(line + "\n" for line in self.known_hosts))
        if self.host_uuid:
            write_private(directory / "host_uuid", self.host_uuid + "\n")
        write_private(directory / "key", self.key_pem)
        write_private(directory / "identity", self.to_identity_file())

    @classmethod
    def load(cls, directory: Path) -> LocalIdentity:
        bundle = directory / "identity"
        if bundle.exists():
            identity = cls.read_identity_file(bundle)
            uuid_path = directory / "host_uuid"
            host_uuid = uuid_path.read_text().strip() if uuid_path.exists() else ""
            return attrs.evolve(identity, host_uuid=host_uuid)
        try:
            key = (directory / "key").read_bytes()
            tls = (directory / "tls.crt").read_bytes()
            cas = tuple(m.group(0).encode() for m in _PEM_BLOCK.finditer((directory / "ca.pem").read_text()))
            ssh_cert = (directory / "ssh-cert.pub").read_text().strip()
            known = tuple(line for line in (directory / "known_hosts").read_text().splitlines() if line.strip())
            uuid_path = directory / "host_uuid"
            host_uuid = uuid_path.read_text().strip() if uuid_path.exists() else ""
        except OSError as exc:
            raise IdentityError(f"cannot read identity in {directory}: {exc.strerror or exc}") from None
        if not cas:
            raise IdentityError(f"identity in {directory} has no CA certificates")
        return cls(key, tls, cas, ssh_cert, known, host_uuid)

    def to_identity_file(self) -> str:
        parts = [self.key_pem.decode().strip()]
        if self.ssh_cert:
            parts.append(self.ssh_cert)
        parts.append(self.tls_cert_pem.decode().strip())
        parts.extend(pem.decode().strip() for pem in self.tls_ca_pems)
        parts.extend(self.known_hosts)
        return "\n".join(parts) + "\n"

    @classmethod
    def from_identity_file(cls, text: str, source: str = "identity file") -> LocalIdentity:
        blocks = [m for m in _PEM_BLOCK.finditer(text)]
        keys = [m.group(0) for m in blocks if "PRIVATE KEY" in m.group("kind")]
        certs = [m.group(0) for m in blocks if m.group("kind") == "CERTIFICATE"]
        if len(keys) != 1:
            raise IdentityError(f"{source}: expected one private key, found {len(keys)}")
        if len(certs) < 2:
            raise IdentityError(f"{source}: expected a TLS certificate followed by CA certificates")
        ssh = _SSH_CERT.search(text)
        known = tuple(line.strip() for line in text.splitlines() if line.startswith("@cert-authority "))
        return cls(keys[0].encode(), certs[0].encode(), tuple(c.encode() for c in certs[1:]),
                   ssh.group(1) if ssh else "", known)

    def write_identity_file(self, path: Path) -> None:
        write_private(path, self.to_identity_file())

    @classmethod
    def read_identity_file(cls, path: Path) -> LocalIdentity:
        try:
            text = path.read_text()
        except OSError as exc:
            raise IdentityError(f"cannot read identity file {path}: {exc.strerror or exc}") from None
        return cls.from_identity_file(text, str(path))
