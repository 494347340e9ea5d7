"""The QEMU backend: guests of the same base images on qcow2 overlays (docs/backends.md), booted with Debian's cloud
kernel and an initrd (`boot`)."""
