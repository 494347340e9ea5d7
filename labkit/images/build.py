"""Image builders: turn a `Recipe` into an ext4 disk image without root.

Each builder fills a staging root folder and then, inside one ``fakeroot`` session, copies the recipe's ``files/``
tree and the boot hook over it and runs ``mkfs.ext4 -d`` so every file is owned by root in the image. Builders are plain
classes in an explicit registry (`BUILDERS`); the store (store.py) decides where results go and caches them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from labkit.errors import ImageError
from labkit.images.guest_contract import HOOK_PATH
from labkit.images.programs import find_program
from labkit.images.recipe import BOOT_HOOK_SOURCE, Recipe
from labkit.progress import ProgressEvent, Reporter

#: Bump when a builder's output changes for the same recipe, so cached images are rebuilt.
BUILDER_VERSION = "1"

#: File system label of built root disks.
ROOT_LABEL = "labkit-root"

#: Folders every busybox image has, with their modes.
_SKELETON = {
    "bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "usr/lib": 0o755, "lib": 0o755,
    "etc": 0o755, "etc/dropbear": 0o700, "dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "tmp": 0o1777,
    "root": 0o700, "home": 0o755, "mnt": 0o755, "var": 0o755, "var/log": 0o755, "var/lib": 0o755,
    "var/lib/labkit": 0o755,
}


@dataclass
class BuildContext:
    """What a builder works with: a scratch folder, the disk to produce, a log file and a progress reporter."""

    recipe: Recipe
    workdir: Path
    disk: Path
    log: TextIO
    log_path: Path
    progress: Reporter

    def step(self, step: str, message: str, done: int = 0, total: int | None = None) -> None:
        self.log.write(f"== {step}: {message}\n")
        self.log.flush()
        self.progress(ProgressEvent(step=step, done=done, total=total, message=message))

    def run(self, step: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Run ``argv``, copying its output to the build log and each line to progress; fail with the log's path."""
        self.log.write(f"$ {shlex.join(argv)}\n")
        self.log.flush()
        try:
            process = subprocess.Popen(
                argv, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", env=env,
            )
        except OSError as err:
            raise ImageError(f"image {self.recipe.name}: cannot run {argv[0]}: {err}") from err
        assert process.stdout is not None
        lines = 0
        with process:
            for line in process.stdout:
                self.log.write(line)
                lines += 1
                self.progress(ProgressEvent(step=step, done=lines, message=line.rstrip()[:200]))
        self.log.flush()
        if process.returncode != 0:
            raise ImageError(
                f"image {self.recipe.name}: step {step} failed ({Path(argv[0]).name} exited with "
                f"{process.returncode}); see {self.log_path}"
            )


class Builder(ABC):
    """One way of making a root file system."""

    @abstractmethod
    def host_inputs(self, recipe: Recipe) -> list[Path]:
        """Host files copied into the image; they are part of the recipe digest."""

    @abstractmethod
    def build(self, ctx: BuildContext) -> None:
        """Produce ``ctx.disk``. Everything else goes in ``ctx.workdir``."""


def install_commands(recipe: Recipe, root: str) -> list[str]:
    """Shell lines (run under fakeroot) that copy files/ and the boot hook over ``root``, owned by root."""
    q = shlex.quote
    lines: list[str] = []
    for entry in recipe.files():
        dest = q(f"{root}/{entry.path}")
        if entry.kind == "dir":
            explicit = f" && chmod {entry.mode:o} {dest}" if entry.path in recipe.modes else ""
            lines.append(f"if [ ! -d {dest} ]; then mkdir {dest} && chown 0:0 {dest} && chmod {entry.mode:o} {dest}; "
                         f"fi{explicit}")
        elif entry.kind == "file":
            lines.append(f"rm -f {dest} && cp {q(str(entry.source))} {dest} && chown 0:0 {dest} "
                         f"&& chmod {entry.mode:o} {dest}")
        else:
            lines.append(f"rm -f {dest} && ln -s {q(entry.target)} {dest} && chown -h 0:0 {dest}")
    hook = q(f"{root}{HOOK_PATH}")
    lines.append(f"mkdir -p {q(f'{root}{Path(HOOK_PATH).parent}')}")
    lines.append(f"rm -f {hook} && cp {q(str(BOOT_HOOK_SOURCE))} {hook} && chown 0:0 {hook} && chmod 755 {hook}")
    return lines


def mkfs_command(recipe: Recipe, root: str, disk: Path) -> str:
    """The mkfs.ext4 line that turns the staging folder into the disk image."""
    mkfs = find_program("mkfs.ext4")
    return shlex.join([mkfs, "-q", "-F", "-L", ROOT_LABEL, "-d", root, str(disk), f"{recipe.size_bytes // 1024}k"])


def run_fakeroot(ctx: BuildContext, step: str, lines: list[str]) -> None:
    """Run ``lines`` as one ``sh -e`` script inside one fakeroot session (ownership lives only that long)."""
    script = ctx.workdir / f"{step}.sh"
    script.write_text("set -e\n" + "\n".join(lines) + "\n")
    ctx.log.write(f"-- {script.name}:\n{script.read_text()}")
    ctx.run(step, [find_program("fakeroot"), "--", "/bin/sh", "-e", str(script)])


def shared_libraries(binary: Path) -> list[Path]:
    """The libraries ``ldd`` lists for ``binary`` (paths as the loader names them); empty for static binaries."""
    try:
        result = subprocess.run([find_program("ldd"), str(binary)], capture_output=True, text=True, check=False)
    except OSError as err:
        raise ImageError(f"cannot run ldd on {binary}: {err}") from err
    libraries: list[Path] = []
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words:
            target = words[words.index("=>") + 1]
            if target.startswith("/"):
                libraries.append(Path(target))
        elif words and words[0].startswith("/"):
            libraries.append(Path(words[0]))
    return libraries


class BusyboxBuilder(Builder):
    """busybox-static plus host binaries (dropbear) and their libraries; builds offline in seconds."""

    def _busybox(self) -> Path:
        return Path(find_program("busybox")).resolve()

    def _binaries(self, recipe: Recipe) -> list[tuple[Path, list[Path]]]:
        found = []
        for name in recipe.binaries:
            binary = Path(name)
            if not binary.is_file():
                raise ImageError(f"{recipe.recipe_file}: key 'binaries': the host has no {binary} (install it first)")
            found.append((binary, shared_libraries(binary)))
        return found

    def host_inputs(self, recipe: Recipe) -> list[Path]:
        inputs = [self._busybox()]
        for binary, libraries in self._binaries(recipe):
            inputs.append(binary)
            inputs.extend(lib.resolve() for lib in libraries)
        return inputs

    def build(self, ctx: BuildContext) -> None:
        root = ctx.workdir / "root"
        ctx.step("bootstrap", "copying busybox and host binaries")
        for rel, mode in _SKELETON.items():
            (root / rel).mkdir(parents=True, exist_ok=True)
            (root / rel).chmod(mode)
        busybox = self._busybox()
        shutil.copyfile(busybox, root / "bin/busybox")
        (root / "bin/busybox").chmod(0o755)
        # Links from --list-full (not --install, which would point at the host's path).
        listing = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=False)
        if listing.returncode != 0 or not listing.stdout.strip():
            raise ImageError(f"{busybox} --list-full failed; is it busybox-static?")
        for rel in listing.stdout.split():
            link = root / rel
            if rel == "bin/busybox" or link.exists() or link.is_symlink():
                continue
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
        for binary, libraries in self._binaries(ctx.recipe):
            for source in (binary, *libraries):
                dest = root / source.relative_to("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source.resolve(), dest)
                dest.chmod(0o755)
            ctx.log.write(f"copied {binary} with {', '.join(map(str, libraries)) or 'no libraries'}\n")
        ctx.step("filesystem", f"making a {ctx.recipe.size} ext4 file system")
        lines = [
            f"cd {shlex.quote(str(ctx.workdir))}",
            "chown -R 0:0 root",
            "mknod -m 600 root/dev/console c 5 1",
            "mknod -m 666 root/dev/null c 1 3",
            *install_commands(ctx.recipe, "root"),
            mkfs_command(ctx.recipe, "root", ctx.disk),
        ]
        run_fakeroot(ctx, "filesystem", lines)


def mmdebstrap_mode() -> str:
    """The mmdebstrap mode: fakechroot works the same as root and as an ordinary user, and needs no subuids.

    ``--mode=auto`` would pick the root/sudo mode for root (which mounts) and unshare for users with
    /etc/subuid entries.
    """
    find_program("fakechroot")
    return "fakechroot"


class MmdebstrapBuilder(Builder):
    """Debian from the package mirror with mmdebstrap, unpacked and turned into ext4 under fakeroot."""

    def host_inputs(self, recipe: Recipe) -> list[Path]:
        return []

    def build(self, ctx: BuildContext) -> None:
        recipe = ctx.recipe
        tarball = ctx.workdir / "rootfs.tar"
        argv = [
            find_program("mmdebstrap"),
            f"--mode={mmdebstrap_mode()}",
            f"--variant={recipe.variant}",
        ]
        if recipe.packages:
            argv.append(f"--include={','.join(recipe.packages)}")
        argv.extend(f"--customize-hook={hook}" for hook in recipe.hooks)
        argv.extend([recipe.suite, str(tarball)])
        if recipe.mirror:
            argv.append(recipe.mirror)
        env = dict(os.environ, TMPDIR=str(ctx.workdir))
        ctx.step("bootstrap", f"mmdebstrap {recipe.suite} ({len(recipe.packages)} extra packages)")
        ctx.run("bootstrap", argv, env=env)
        ctx.step("filesystem", f"unpacking and making a {recipe.size} ext4 file system")
        lines = [
            f"cd {shlex.quote(str(ctx.workdir))}",
            "mkdir root",
            "tar -xpf rootfs.tar -C root --numeric-owner",
            "rm -f rootfs.tar",
            *install_commands(recipe, "root"),
            mkfs_command(recipe, "root", ctx.disk),
        ]
        run_fakeroot(ctx, "filesystem", lines)


#: The builders a recipe's ``builder`` key may name.
BUILDERS: dict[str, Builder] = {
    "busybox": BusyboxBuilder(),
    "mmdebstrap": MmdebstrapBuilder(),
}
