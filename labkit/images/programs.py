"""Host programs the image code runs (mkfs.ext4, fakeroot, mmdebstrap ...), found even when /sbin is not on PATH.

An ordinary user's PATH on Debian lacks /usr/sbin and /sbin, where mkfs.ext4 and debugfs live, so they are looked up
there too. A missing program is a `ConfigError` naming the Debian package to install.
"""

from __future__ import annotations

import os
import shutil

from labkit.errors import ConfigError

#: Debian package that provides each program, for the error message.
PACKAGES = {
    "mkfs.ext4": "e2fsprogs",
    "debugfs": "e2fsprogs",
    "fakeroot": "fakeroot",
    "mmdebstrap": "mmdebstrap",
    "fakechroot": "fakechroot",
    "e2label": "e2fsprogs",
    "busybox": "busybox-static",
    "ldd": "libc-bin",
    "cp": "coreutils",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
}

_EXTRA_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def find_program(name: str) -> str:
    """Return the absolute path of host program ``name`` or raise `ConfigError`."""
    search = os.pathsep.join([os.environ.get("PATH", "/usr/bin:/bin"), *_EXTRA_DIRS])
    found = shutil.which(name, path=search)
    if found is None:
        package = PACKAGES.get(name, name)
        raise ConfigError(f"the program {name} is not installed (Debian package {package})")
    return found
