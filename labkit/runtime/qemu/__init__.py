"""The QEMU backend: qemu-system-x86_64 guests on qcow2 overlays (docs/backends.md)."""
