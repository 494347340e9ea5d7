"""QEMU backend: guests of the same base images on qcow2 overlays, booted with Debian's cloud kernel and an initrd."""
