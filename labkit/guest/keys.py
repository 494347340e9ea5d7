"""labkit's own SSH key, with which the grader and ``vm exec`` log in (never a student's credentials)."""

from __future__ import annotations

import os
from pathlib import Path

KEY_NAME = "labkit_ed25519"


def ensure_key(keys_dir: Path) -> Path:
    """Return the private key path, generating an Ed25519 pair on first use (private file mode 0600)."""
    private = keys_dir / KEY_NAME
    if private.exists():
        return private
    from cryptography.hazmat.primitives import serialization  # only on first use: it is slow to import
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    tmp = private.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    (keys_dir / f"{KEY_NAME}.pub").write_bytes(public + b" labkit\n")
    os.replace(tmp, private)
    return private


def public_key(keys_dir: Path) -> str:
    """The OpenSSH public key line for authorized_keys."""
    ensure_key(keys_dir)
    return (keys_dir / f"{KEY_NAME}.pub").read_text().strip()
