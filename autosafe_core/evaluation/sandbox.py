"""An isolated shell: the one place where the factory runs commands for real.

A `Sandbox` is a throwaway workspace (a temporary directory on the host, deleted on
`close`) and a way to run bash scripts on it, each in a fresh set of Linux namespaces:
no network (its own, empty network namespace), its own pid, ipc, uts and user
namespaces, the host's `/usr` and a short list of `/etc` files read-only, the
workspace as `/home/user` (the only writable host path), a small tmpfs as `/tmp`, and
an environment with no host variables. Every command runs under resource limits (CPU
seconds, address space, processes, file size: `prlimit`, applied inside the new user
namespace so the process count is the sandbox's own) and a wall-clock timeout that
kills everything it started; a watchdog stops a command that grows the workspace past
its quota.

Backends: bubblewrap (`bwrap`); `unshare` with a chroot when bwrap is missing. When
neither gives a working sandbox, `Sandbox()` raises `SandboxUnavailable`: there is no
unisolated mode. Run as root, a command first drops to an unprivileged uid
(`Limits.run_as_uid`), because the kernel does not count root's processes against a
process limit and root inside would keep capabilities.

Knows nothing about agents, tasks or models.
"""

from __future__ import annotations

import io
import os
import selectors
import shutil
import signal
import stat
import subprocess
import tarfile
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Backend = Literal["auto", "bwrap", "unshare"]

MiB = 1024 * 1024
HOME = "/home/user"
PATH = "/usr/bin:/bin:/usr/sbin:/sbin"
USER_ID = 1000
"""The uid and gid the command sees (bwrap); files it creates belong to `run_as_uid` on the host."""

_ETC = (
    "alternatives", "bash.bashrc", "debian_version", "inputrc", "ld.so.cache", "ld.so.conf", "ld.so.conf.d",
    "localtime", "magic", "magic.mime", "mime.types", "nsswitch.conf", "os-release", "profile", "python3",
    "python3.11", "timezone",
)  # fmt: skip
"""The host's /etc entries a shell and its tools need; nothing that names the host or holds keys."""
_TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_DEVICES = ("null", "zero", "full", "random", "urandom")
_KILLED_EXIT = -int(signal.SIGKILL)


class SandboxUnavailable(RuntimeError):
    """No isolation works on this machine; the message says what was tried and why it failed."""


class Limits(BaseModel):
    """What one command may use."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    wall_s: float = Field(30.0, gt=0, le=3600, description="Wall-clock seconds before everything is killed.")
    cpu_s: int = Field(10, ge=1, description="CPU seconds per process (RLIMIT_CPU).")
    memory_bytes: int = Field(1024 * MiB, ge=64 * MiB, description="Address space per process (RLIMIT_AS).")
    processes: int = Field(64, ge=4, description="Processes and threads in the sandbox at once (RLIMIT_NPROC).")
    file_bytes: int = Field(16 * MiB, ge=1, description="Largest file a process may write (RLIMIT_FSIZE).")
    tmp_bytes: int = Field(64 * MiB, ge=MiB, description="Size of the tmpfs at /tmp (per command).")
    workspace_bytes: int = Field(256 * MiB, ge=MiB, description="The workspace's quota, enforced by a watchdog.")
    output_bytes: int = Field(
        64 * 1024, ge=1024, description="Output kept per command (head and tail); the rest is counted."
    )
    run_as_uid: int = Field(65534, ge=1, description="Host uid of the commands when this process is root.")


@dataclass(frozen=True)
class CommandResult:
    """What a command printed (stdout and stderr interleaved) and how it ended."""

    output: str
    exit_code: int
    """The shell's exit status; negative: killed by that signal."""
    timed_out: bool = False
    over_quota: bool = False
    dropped_bytes: int = 0
    """Output past `Limits.output_bytes`, dropped from the middle (`output` says where)."""
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.over_quota


class Sandbox:
    """A throwaway workspace and isolated commands on it; use as a context manager."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        backend: Backend = "auto",
        read_only: Mapping[str | Path, str] | None = None,
        base_dir: str | Path | None = None,
    ):
        """read_only: host path -> absolute path inside, bound read-only (e.g. a data set to read)."""
        self.limits = limits or Limits()
        self.read_only = {str(Path(host).resolve()): inside for host, inside in (read_only or {}).items()}
        for inside in self.read_only.values():
            if not inside.startswith("/") or "\t" in inside or "\n" in inside:
                raise ValueError(f"read-only bind target {inside!r} must be an absolute path")
        self._root = Path(tempfile.mkdtemp(prefix="autosafe-sandbox-", dir=base_dir))
        self._finalizer = weakref.finalize(self, _remove_tree, self._root)
        self.home = self._root / "home"
        """The workspace on the host side: read it only through `run` (it may hold links the agent made)."""
        self._uid = self.limits.run_as_uid if os.geteuid() == 0 else None
        self._free_at_start: int | None = None  # the quota watchdog starts after the probe
        try:
            self._prepare()
            self.backend = self._choose(backend)
        except BaseException:
            self.close()
            raise
        self._free_at_start = shutil.disk_usage(self._root).free

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the workspace and everything the commands left in it."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def _prepare(self) -> None:
        os.chmod(self._root, 0o711)  # traversable by the unprivileged uid, not listable
        for name in ("home", "newroot", "stdin"):
            (self._root / name).mkdir()
        os.chmod(self._root / "stdin", 0o711)
        etc = self._root / "etc"
        etc.mkdir()
        # `user` is USER_ID under bwrap, and the host uid itself under unshare run as root.
        ids = sorted({USER_ID, self._uid or USER_ID})
        users = "".join(f"user:x:{i}:{i}:user:{HOME}:/bin/bash\n" for i in ids)
        (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" + users)
        (etc / "group").write_text("root:x:0:\n" + "".join(f"user:x:{i}:\n" for i in ids))
        (etc / "hostname").write_text("sandbox\n")
        (etc / "hosts").write_text("127.0.0.1 localhost sandbox\n::1 localhost\n")
        for f in etc.iterdir():
            f.chmod(0o644)
        if self._uid is not None:
            os.chown(self.home, self._uid, self._uid)

    def _choose(self, backend: Backend) -> str:
        """The first backend that runs a probe with its isolation in place."""
        if backend == "auto":
            candidates = [b for b in ("bwrap", "unshare") if shutil.which(b)]
            if not candidates:
                raise SandboxUnavailable("no sandbox: neither bwrap (bubblewrap) nor unshare is installed")
        else:
            candidates = [backend]
        failures = []
        for candidate in candidates:
            self.backend = candidate
            reason = self._probe()
            if reason is None:
                return candidate
            failures.append(f"{candidate}: {reason}")
        raise SandboxUnavailable("no working sandbox, refusing to run commands: " + "; ".join(failures))

    def _probe(self) -> str | None:
        """Why this backend does not isolate here, or None when it does."""
        if shutil.which(self.backend) is None:
            return "not installed"
        script = (
            'test "$HOME" = /home/user && test -w /home/user && ! test -w /usr && ! test -e "$1" '
            "&& test -r /proc/net/dev "
            "&& test -z \"$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | grep -v '^lo$')\" "
            "&& echo isolated"
        )
        try:
            result = self.run(script, args=[str(self._root)], timeout_s=20)
        except OSError as exc:
            return f"cannot start: {exc}"
        if result.exit_code != 0 or result.output.strip() != "isolated":
            return f"probe failed (exit {result.exit_code}): {result.output.strip()[:300]}"
        return None

    # --- commands -----------------------------------------------------------------------

    def run(
        self,
        script: str,
        *,
        args: list[str] | tuple[str, ...] = (),
        cwd: str = HOME,
        stdin: bytes | None = None,
        timeout_s: float | None = None,
    ) -> CommandResult:
        """Run bash `script` (positional `args`) in `cwd` (absolute, or relative to the home) inside the sandbox."""
        if self.closed:
            raise RuntimeError("sandbox is closed")
        limit = min(timeout_s, self.limits.wall_s) if timeout_s is not None else self.limits.wall_s
        inner = [*self._limits_argv(), "/usr/bin/bash", "-c", _ENTRY, "sandbox", cwd, script, *args]
        if self.backend == "bwrap":
            argv = self._bwrap_argv(inner)
            if self._uid is not None:
                # Drop root before any namespace exists: see the module docstring.
                argv = ["setpriv", f"--reuid={self._uid}", f"--regid={self._uid}", "--clear-groups", *argv]
        else:
            argv = self._unshare_argv(inner)  # it drops root itself, after building the mounts
        stdin_file = self._stdin_file(stdin)
        try:
            return self._supervise(argv, stdin_file, limit)
        finally:
            if stdin_file is not None:
                stdin_file.close()

    def put_files(self, files: dict[str, tuple[bytes, int]]) -> CommandResult:
        """Create files (home-relative path -> (content, mode)) in the workspace, from inside the sandbox."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for path, (content, mode) in files.items():
                info = tarfile.TarInfo(path)
                info.size, info.mode, info.mtime = len(content), mode, int(time.time())
                tar.addfile(info, io.BytesIO(content))
        return self.run("tar -x --no-same-owner --same-permissions -f -", stdin=buffer.getvalue())

    def _limits_argv(self) -> list[str]:
        lim = self.limits
        return [
            "/usr/bin/prlimit",
            f"--cpu={lim.cpu_s}",
            f"--as={lim.memory_bytes}",
            f"--nproc={lim.processes}",
            f"--fsize={lim.file_bytes}",
            "--core=0",
            "--",
        ]

    def _env(self) -> list[tuple[str, str]]:
        return [("PATH", PATH), ("HOME", HOME), ("USER", "user"), ("LOGNAME", "user"), ("SHELL", "/bin/bash"),
                ("LANG", "C.UTF-8"), ("TERM", "dumb"), ("TMPDIR", "/tmp")]  # fmt: skip

    def _bwrap_argv(self, inner: list[str]) -> list[str]:
        argv = ["bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(USER_ID),
                "--gid", str(USER_ID), "--hostname", "sandbox", "--die-with-parent", "--new-session",
                "--clearenv", "--ro-bind", "/usr", "/usr",
                "--tmpfs", "/usr/local", "--remount-ro", "/usr/local"]  # fmt: skip
        for name in _TOP_LEVEL:
            host = Path("/") / name
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                argv += ["--ro-bind", str(host), f"/{name}"]
        for name in _ETC:
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for f in ("passwd", "group", "hostname", "hosts"):
            argv += ["--ro-bind", str(self._root / "etc" / f), f"/etc/{f}"]
        for host, inside in self.read_only.items():
            argv += ["--ro-bind", host, inside]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.limits.tmp_bytes), "--tmpfs", "/tmp",
                 "--bind", str(self.home), HOME, "--remount-ro", "/", "--chdir", HOME]  # fmt: skip
        for key, value in self._env():
            argv += ["--setenv", key, value]
        return [*argv, "--", *inner]

    def _unshare_argv(self, inner: list[str]) -> list[str]:
        """unshare(1) into new mount, pid, net, ipc and uts namespaces; `_UNSHARE_SETUP` builds the root and chroots."""
        argv = ["unshare", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child"]
        if os.geteuid() != 0:
            argv += ["--user", "--map-root-user"]
        env = [f"{key}={value}" for key, value in self._env()]
        drop = ["/usr/bin/setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"]
        if self._uid is not None:
            drop += [f"--reuid={self._uid}", f"--regid={self._uid}", "--clear-groups"]
        payload = [*drop, "--", "/usr/bin/env", "-i", *env, *inner]
        etc = " ".join(_ETC)
        binds = "".join(f"{host}\t{inside}\n" for host, inside in self.read_only.items())
        return [*argv, "/bin/sh", "-c", _UNSHARE_SETUP, "setup", str(self._root), str(self.limits.tmp_bytes), etc,
                binds, *payload]  # fmt: skip

    def _stdin_file(self, data: bytes | None):  # noqa: ANN202 - a file object or None
        if data is None:
            return None
        handle = tempfile.TemporaryFile(dir=self._root / "stdin")
        handle.write(data)
        handle.seek(0)
        return handle

    def _supervise(self, argv: list[str], stdin_file, limit: float) -> CommandResult:  # noqa: ANN001
        """Start `argv` in its own process group, keep its output up to the limit, kill it all at the deadline."""
        start = time.monotonic()
        proc = subprocess.Popen(
            argv,
            stdin=stdin_file if stdin_file is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env={"PATH": PATH},  # nothing of this process's environment reaches the sandbox
        )
        out = _HeadTail(self.limits.output_bytes)
        timed_out = over_quota = False
        guard = _QuotaGuard(self.home, self._free_at_start, self.limits.workspace_bytes)
        selector = selectors.DefaultSelector()
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
        try:
            eof = False
            while True:
                remaining = start + limit - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                if not eof:
                    if selector.select(min(remaining, 0.25)):
                        chunk = os.read(proc.stdout.fileno(), 65536)
                        eof = not chunk
                        out.add(chunk)
                else:
                    try:
                        proc.wait(min(remaining, 0.25))
                    except subprocess.TimeoutExpired:
                        pass
                if guard.exceeded():
                    over_quota = True
                    break
                if eof and proc.poll() is not None:
                    break
        finally:
            selector.close()
            _kill_group(proc)
            proc.stdout.close()
        code = proc.returncode if proc.returncode is not None else _KILLED_EXIT
        return CommandResult(
            output=out.text(),
            exit_code=code,
            timed_out=timed_out,
            over_quota=over_quota,
            dropped_bytes=out.dropped,
            wall_s=time.monotonic() - start,
        )


class _HeadTail:
    """A command's output within a budget: its first three quarters and its last quarter
    (where errors and results usually are), and how many bytes between were dropped."""

    def __init__(self, budget: int):
        self.head_max, self.tail_max = budget - budget // 4, budget // 4
        self.head, self.tail = bytearray(), bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.head_max - len(self.head)
        self.head += chunk[:room]
        self.tail += chunk[room:] if room > 0 else chunk
        if len(self.tail) > self.tail_max:
            self.dropped += len(self.tail) - self.tail_max
            del self.tail[: len(self.tail) - self.tail_max]

    def text(self) -> str:
        if not self.dropped:
            return (self.head + self.tail).decode("utf-8", errors="replace")
        cut = f"\n[... {self.dropped} bytes of output not kept ...]\n"
        return self.head.decode("utf-8", errors="replace") + cut + self.tail.decode("utf-8", errors="replace")


class _QuotaGuard:
    """Cheap most of the time: the workspace is walked only when the host disk has lost
    more free space than the quota left, so other writers on the machine cost a walk
    now and then, never a false kill."""

    def __init__(self, home: Path, free_at_start: int | None, quota: int):
        self.home, self.free_at_start, self.quota = home, free_at_start, quota
        self.slack = quota  # how far the disk may fill before the workspace could be over quota
        self.next_check = 0.0

    def exceeded(self) -> bool:
        if self.free_at_start is None or time.monotonic() < self.next_check:
            return False
        self.next_check = time.monotonic() + 0.25
        lost = self.free_at_start - shutil.disk_usage(self.home).free
        if lost <= self.slack:
            return False
        used = tree_bytes(self.home)
        if used > self.quota:
            return True
        self.slack = lost + (self.quota - used)
        return False


def tree_bytes(root: Path) -> int:
    """Bytes allocated under `root`, links not followed."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return total


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the sandbox's process group (its pid namespace dies with it) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _remove_tree(root: Path) -> None:
    # A command may have taken its own permissions away (chmod 000): give them back first.
    # os.walk descends into a folder only after the loop body has run for its parent.
    for folder, subfolders, _ in os.walk(root):
        for name in subfolders:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
    shutil.rmtree(root)


_ENTRY = 'umask 022; cd -- "$HOME" && cd -- "$1" || exit 126; s=$2; shift 2; exec /usr/bin/bash -c "$s" bash "$@"'
"""Inside the sandbox: go to the working directory (relative to the home), then run the script with its args."""

_UNSHARE_SETUP = r"""
set -eu
root=$1 tmp_bytes=$2 etc=$3 binds=$4; shift 4
new=$root/newroot
mount --make-rprivate /
mount -t tmpfs -o mode=0755,size=1m sandbox "$new"
mkdir -p "$new/usr" "$new/etc" "$new/home/user" "$new/tmp" "$new/proc" "$new/dev"
mount --rbind /usr "$new/usr"; mount -o remount,bind,ro "$new/usr"
mount -t tmpfs -o ro,size=4k empty "$new/usr/local" 2>/dev/null || true
for d in bin sbin lib lib32 lib64 libx32; do
  if [ -L "/$d" ]; then ln -s "$(readlink "/$d")" "$new/$d"
  elif [ -d "/$d" ]; then mkdir "$new/$d"; mount --rbind "/$d" "$new/$d"; mount -o remount,bind,ro "$new/$d"; fi
done
bind_ro() {
  if [ -d "$1" ]; then mkdir -p "$2"; else touch "$2"; fi
  mount --bind "$1" "$2"; mount -o remount,bind,ro "$2"
}
for f in $etc; do if [ -e "/etc/$f" ]; then bind_ro "/etc/$f" "$new/etc/$f"; fi; done
for f in passwd group hostname hosts; do bind_ro "$root/etc/$f" "$new/etc/$f"; done
for d in null zero full random urandom; do touch "$new/dev/$d"; mount --bind "/dev/$d" "$new/dev/$d"; done
ln -s /proc/self/fd "$new/dev/fd"; ln -s /proc/self/fd/0 "$new/dev/stdin"
ln -s /proc/self/fd/1 "$new/dev/stdout"; ln -s /proc/self/fd/2 "$new/dev/stderr"
mount --bind "$root/home" "$new/home/user"
tab=$(printf '\t')
printf '%s' "$binds" | while IFS=$tab read -r src dst; do
  if [ -d "$src" ]; then mkdir -p "$new$dst"; else mkdir -p "$(dirname "$new$dst")"; touch "$new$dst"; fi
  mount --rbind "$src" "$new$dst"; mount -o remount,bind,ro "$new$dst"
done
mount -t tmpfs -o "mode=1777,size=$tmp_bytes" tmp "$new/tmp"
mount -t proc proc "$new/proc"
hostname sandbox 2>/dev/null || true
mount -o remount,ro "$new"
exec chroot "$new" "$@"
"""
"""unshare's setup, as root of the new mount namespace: a root of read-only binds, then chroot
and drop every capability (and root, when there was root) before the command runs."""
