"""The fixed points between labkit on the host and the boot hook inside a guest.

The boot hook (``labkit/images/guest/boot-hook.sh``) and the host code must agree on these names; other layers
import them from here (for example the runtime waits for `READY_MARKER` on the console) instead of repeating the
strings.
"""

from __future__ import annotations

#: The exact line a guest prints on /dev/console once it is up and its SSH server listens.
READY_MARKER = "labkit-guest: ready"

#: Where both builders install the boot hook inside the image.
HOOK_PATH = "/usr/lib/labkit/boot-hook"

#: The kernel argument that names the seed disk (``labkit.seed=/dev/vdb``); each backend passes it when there is a seed.
SEED_KERNEL_ARG = "labkit.seed"
#: The seed device when the command line names none (guests started by an older labkit): the second UML disk
#: (``ubd1r=seed.img``).
SEED_DEVICE = "/dev/ubdb"
#: The UML option index of the seed disk (``ubd1r=``).
SEED_UBD_INDEX = 1
#: Where the hook unpacks the seed inside the guest (a tmpfs folder, removed after use; an older ext4 seed is mounted)
SEED_MOUNT = "/run/labkit/seed"

#: Paths inside the seed file system.
SEED_ENV = "labkit/seed.env"
SEED_AUTHORIZED_KEYS = "labkit/authorized_keys"
SEED_ROOT_PASSWORD = "labkit/root_password"
#: The same password hashed by labkit (bcrypt), for ``chpasswd -e``: hashing in a QEMU guest took most of a second.
SEED_ROOT_PASSWORD_HASH = "labkit/root_password.hash"
#: The machine's own SSH host key (OpenSSH format) and its public half, installed over /etc/ssh's by the hook.
SEED_SSH_HOST_KEY = "labkit/ssh_host_ed25519_key"
SEED_FILES = "labkit/files"
#: The same files as one tar archive owned by root (what labkit writes: no fakeroot needed to make the seed).
SEED_FILES_TAR = "labkit/files.tar"
SEED_STARTUP = "labkit/startup"

#: A file ``seed-<seed_id>`` here means "files/ of this seed were already copied into this overlay".
GUEST_STATE_DIR = "/var/lib/labkit"
#: The startup scripts' output, inside the guest.
STARTUP_LOG = "/var/log/labkit-startup.log"

#: Default network of a guest behind classic slirp.
SLIRP_GUEST_ADDRESS = "10.0.2.15/24"
SLIRP_HOST_ADDRESS = "10.0.2.2"
SLIRP_DNS = "10.0.2.3"

#: The kernel argument of a warm boot (``labkit.warm=/dev/vdb``): no seed yet; the hook waits for that disk to appear.
WARM_KERNEL_ARG = "labkit.warm"
#: The line a warm boot prints once it is booted and idle: its running state is saved then.
WARM_MARKER = "labkit-guest: warm"

#: A guest that cannot become ready prints a line starting with this instead of `READY_MARKER`.
ERROR_MARKER = "labkit-guest: error:"


def seed_kernel_arg(device: str) -> str:
    """The kernel argument that tells the boot hook where the seed disk is."""
    if not device.startswith("/dev/") or any(c.isspace() for c in device):
        raise ValueError(f"not a device path: {device!r}")
    return f"{SEED_KERNEL_ARG}={device}"
