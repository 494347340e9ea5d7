"""labkit's own SSH key, with which the grader and ``vm exec`` log in (never a student's credentials)."""

from __future__ import annotations

from pathlib import Path

from labkit.atomic import locked, write_atomic

KEY_NAME = "labkit_ed25519"


def ensure_key(keys_dir: Path) -> Path:
    """Return the private key path, generating an Ed25519 pair on first use (private file mode 0600).

    Many threads and processes may ask at once (a class is provisioned in parallel): one makes the key, the rest wait.
    """
    private = keys_dir / KEY_NAME
    if private.exists():
        return private
    keys_dir.mkdir(parents=True, exist_ok=True)
    with locked(keys_dir / ".lock"):
        if private.exists():
            return private
        from cryptography.hazmat.primitives import serialization  # only on first use: it is slow to import
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        write_atomic(keys_dir / f"{KEY_NAME}.pub", public + b" labkit\n", 0o644)
        write_atomic(private, pem, 0o600)  # last: its existence says the pair is complete
    return private


def new_host_key() -> tuple[str, str]:
    """A new Ed25519 SSH host key for one machine: (private key in OpenSSH format, public key line)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private.decode(), public.decode()


def public_key(keys_dir: Path) -> str:
    """The OpenSSH public key line for authorized_keys."""
    ensure_key(keys_dir)
    return (keys_dir / f"{KEY_NAME}.pub").read_text().strip()
