"""The sandbox isolates for real: destructive commands, network calls, fork bombs,
runaway loops and huge files inside it leave the host as it was.

Isolation tests run on every backend that works here (bubblewrap; unshare with a
chroot, the fallback); a backend that cannot run on this machine is skipped with the
reason. Nothing here sleeps to synchronise: servers are ready once bound, and a
command's end is its process's end.
"""

from __future__ import annotations

import os
import shutil
import socket
import socketserver
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from autosafe_core.evaluation import sandbox as sandbox_module
from autosafe_core.evaluation.sandbox import HOME, Limits, Sandbox, SandboxUnavailable

BACKENDS = ["bwrap", "unshare"]


def _available(backend: str) -> str | None:
    try:
        Sandbox(backend=backend).close()
    except SandboxUnavailable as exc:
        return str(exc)
    return None


_UNAVAILABLE = {b: _available(b) for b in BACKENDS}


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    reason = _UNAVAILABLE[request.param]
    if reason is not None:
        pytest.skip(f"{request.param} sandbox does not work on this machine: {reason}")
    return request.param


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


# --- it runs ------------------------------------------------------------------------


def test_commands_run_in_the_workspace_with_a_clean_environment(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOSAFE_TEST_HOST_SECRET", "do-not-leak-4711")
    with Sandbox(backend=backend) as box:
        result = box.run('pwd; echo "$HOME"; id -u; echo hello > greeting.txt; env')
        assert result.ok, result.output
        lines = result.output.splitlines()
        assert lines[:2] == [HOME, HOME]
        assert lines[2] != "0", "commands never run as root inside"
        assert "do-not-leak-4711" not in result.output
        assert (box.home / "greeting.txt").read_text() == "hello\n"
        # State persists from one command to the next, as in a terminal.
        assert box.run("cat greeting.txt").output == "hello\n"


def test_a_relative_working_directory_is_inside_the_home(backend: str) -> None:
    with Sandbox(backend=backend) as box:
        box.run("mkdir -p project/src")
        assert box.run("pwd", cwd="project/src").output == f"{HOME}/project/src\n"
        assert box.run("pwd", cwd="/tmp").output == "/tmp\n"
        missing = box.run("pwd", cwd="nowhere")
        assert missing.exit_code == 126 and "nowhere" in missing.output


def test_arguments_and_stdin_reach_the_script_verbatim(backend: str) -> None:
    with Sandbox(backend=backend) as box:
        tricky = "a b; $(touch pwned) `id` 'q'"
        result = box.run('printf "%s\\n" "$1"; cat', args=[tricky], stdin=b"from stdin\n")
        assert result.output == f"{tricky}\nfrom stdin\n"
        assert box.run("ls").output == "", "the argument was never evaluated"


# --- isolation ----------------------------------------------------------------------


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A host folder anyone may write (so only the sandbox's read-only bind protects it), with a marker.

    Directly in the system temp dir: pytest's own folders are private to this user, and as
    root the sandbox runs as an unprivileged uid that must reach the folder to bind it.
    """
    d = Path(tempfile.mkdtemp(prefix="autosafe-host-data-"))
    (d / "important.txt").write_text("keep me\n")
    (d / "marker").write_text("host marker\n")
    for p in (d, d / "important.txt", d / "marker"):
        p.chmod(0o777)
    yield d
    shutil.rmtree(d)


def test_destructive_commands_leave_the_host_untouched(backend: str, host_dir: Path) -> None:
    before = {p.name: p.read_bytes() for p in host_dir.iterdir()}
    usr_probe, etc_probe = Path("/usr/autosafe-sandbox-probe"), Path("/etc/autosafe-sandbox-probe")
    with Sandbox(backend=backend, read_only={host_dir: "/data"}) as box:
        assert box.run("cat /data/important.txt").output == "keep me\n", "the bind is there"
        attacks = {
            "delete the read-only bind": "rm -rf /data/* /data",
            "overwrite through the bind": "echo gone > /data/important.txt",
            "write to /usr": f"echo x > {usr_probe}",
            "write to /etc": f"echo x > {etc_probe}",
            "append to passwd": "echo 'evil:x:0:0::/:/bin/sh' >> /etc/passwd",
            "delete the host marker by its host path": f"rm {host_dir / 'marker'}",
            "see the host's files": f"ls {host_dir} || ls /work",
        }
        for what, command in attacks.items():
            result = box.run(command)
            assert result.exit_code != 0, f"{what}: succeeded inside: {result.output}"
        assert "Read-only file system" in box.run("touch /data/new /usr/new /etc/new").output
    assert {p.name: p.read_bytes() for p in host_dir.iterdir()} == before
    assert not usr_probe.exists() and not etc_probe.exists()


def test_rm_rf_of_everything_only_empties_the_workspace(backend: str, host_dir: Path) -> None:
    with Sandbox(backend=backend, read_only={host_dir: "/data"}) as box:
        box.run("mkdir -p a/b && echo x > a/b/c")
        box.run("rm -rf --no-preserve-root /data /usr/share/doc /etc /home/user/* 2>/dev/null")
        assert box.run("ls -A").output == ""
        assert box.run("cat /data/important.txt").output == "keep me\n"
        assert box.run("test -d /usr/share/doc && test -e /etc/passwd").ok
    assert (host_dir / "important.txt").read_text() == "keep me\n"
    assert Path("/usr/share/doc").is_dir() and Path("/etc/passwd").is_file()


class _Recorder(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.server.connections.append(self.client_address)  # type: ignore[attr-defined]
        self.request.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")


@pytest.fixture
def host_server() -> Iterator[tuple[socketserver.TCPServer, int]]:
    """A TCP server on every host address, recording who connects."""
    server = socketserver.ThreadingTCPServer(("0.0.0.0", 0), _Recorder)
    server.connections = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, server.server_address[1]
    server.shutdown()
    server.server_close()


def _host_addresses() -> list[str]:
    addresses = {"127.0.0.1"}
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            addresses.add(s.getsockname()[0])
    except OSError:
        pass
    return sorted(addresses)


def test_the_network_is_unreachable(backend: str, host_server: tuple[socketserver.TCPServer, int]) -> None:
    server, port = host_server
    addresses = _host_addresses()
    for address in addresses:  # the control: the server answers the host
        with socket.create_connection((address, port), timeout=5) as s:
            assert s.recv(64).endswith(b"ok")
    seen = len(server.connections)  # type: ignore[attr-defined]
    with Sandbox(backend=backend) as box:
        interfaces = box.run("tail -n +3 /proc/net/dev | cut -d: -f1").output.split()
        assert interfaces == ["lo"], "a network namespace of its own, with loopback only"
        for address in addresses:
            curl = box.run(f"curl -sS --max-time 5 http://{address}:{port}/")
            assert curl.exit_code != 0 and "ok" not in curl.output, f"{address}: {curl.output}"
            py = box.run(f"python3 -c \"import socket; socket.create_connection(('{address}', {port}), timeout=5)\"")
            assert py.exit_code != 0, f"{address}: python connected"
        assert box.run("curl -sS --max-time 5 https://pypi.org/").exit_code != 0
    assert len(server.connections) == seen, "nothing reached the host server from inside"  # type: ignore[attr-defined]


# --- resource limits and the timeout ----------------------------------------------------


def test_a_fork_bomb_is_held_to_the_process_limit_and_killed(backend: str) -> None:
    marker = f"bomb-{uuid.uuid4().hex[:8]}"
    limits = Limits(processes=32, wall_s=4)
    with Sandbox(limits, backend=backend) as box:
        # Python, not bash: bash retries a refused fork for 15 s.
        counted = box.run(
            "python3 -c 'import subprocess\nn = 0\ntry:\n    while n < 100:\n"
            "        subprocess.Popen([\"sleep\", \"600\"]); n += 1\nexcept OSError:\n    pass\nprint(n)'"
        )
        assert 4 <= int(counted.output.split()[-1]) < 32, counted.output
        start = time.monotonic()
        # Every process waits for its two children: the tree grows until the limit refuses forks.
        bomb = box.run(f"exec -a {marker} bash -c ':() {{ : | : ; }}; :'")
        assert "Resource temporarily unavailable" in bomb.output, "the process limit refused forks"
        assert bomb.timed_out, "bash retries refused forks: the wall clock ends it"
        assert time.monotonic() - start < 4 + 10
        assert box.run("echo alive").output == "alive\n", "the next command runs normally"
    assert processes_with(marker) == []


def test_a_runaway_loop_is_stopped_by_the_cpu_limit(backend: str) -> None:
    with Sandbox(Limits(cpu_s=1, wall_s=60), backend=backend) as box:
        result = box.run("while :; do :; done")
    assert not result.timed_out, "the CPU limit stopped it, not the wall clock"
    assert result.exit_code != 0 and result.wall_s < 30


def test_memory_beyond_the_limit_is_refused(backend: str) -> None:
    with Sandbox(Limits(memory_bytes=256 * 1024 * 1024), backend=backend) as box:
        result = box.run("python3 -c 'x = bytearray(1024 ** 3); print(\"allocated\")'")
    assert result.exit_code != 0 and "MemoryError" in result.output


def test_a_huge_file_stops_at_the_file_size_limit(backend: str) -> None:
    with Sandbox(Limits(file_bytes=1024 * 1024), backend=backend) as box:
        result = box.run("head -c 100M /dev/zero > big; stat -c %s big")
        assert "File size limit exceeded" in result.output
        assert result.output.split()[-1] == str(1024 * 1024)


def test_the_workspace_quota_stops_many_files(backend: str) -> None:
    limits = Limits(workspace_bytes=8 * 1024 * 1024, file_bytes=2 * 1024 * 1024, wall_s=60)
    with Sandbox(limits, backend=backend) as box:
        result = box.run("for i in $(seq 200); do head -c 2M /dev/urandom > f$i; sync f$i; done")
        assert result.over_quota and not result.ok
        assert sandbox_module.tree_bytes(box.home) < 64 * 1024 * 1024


def test_the_timeout_kills_the_command_and_its_children(backend: str) -> None:
    marker = f"sleeper-{uuid.uuid4().hex[:8]}"
    with Sandbox(Limits(wall_s=30), backend=backend) as box:
        start = time.monotonic()
        result = box.run(f"(exec -a {marker} sleep 600) & exec -a {marker} sleep 600", timeout_s=1)
        assert result.timed_out and not result.ok
        assert time.monotonic() - start < 10
    assert processes_with(marker) == []


def test_output_keeps_its_head_and_tail_up_to_the_limit(backend: str) -> None:
    with Sandbox(Limits(output_bytes=4096), backend=backend) as box:
        result = box.run("seq 1 200000")
    assert result.ok and result.dropped_bytes == len("".join(f"{i}\n" for i in range(1, 200001))) - 4096
    head, cut, tail = result.output.partition(f"\n[... {result.dropped_bytes} bytes of output not kept ...]\n")
    assert cut and head.startswith("1\n2\n3\n") and tail.endswith("199999\n200000\n")
    assert len(head) + len(tail) == 4096


# --- the scratch file system ----------------------------------------------------------


def test_the_scratch_dir_is_gone_after_close_whatever_the_commands_did(backend: str) -> None:
    box = Sandbox(backend=backend)
    box.run("mkdir -p locked/inner && echo x > locked/inner/f && chmod 000 locked/inner locked && ln -s / root-link")
    root = box.home.parent
    assert root.exists()
    box.close()
    assert not root.exists()
    with pytest.raises(RuntimeError, match="closed"):
        box.run("true")


def test_no_isolation_means_no_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    before = set(Path(sandbox_module.tempfile.gettempdir()).glob("autosafe-sandbox-*"))
    with pytest.raises(SandboxUnavailable, match="neither bwrap"):
        Sandbox()
    assert set(Path(sandbox_module.tempfile.gettempdir()).glob("autosafe-sandbox-*")) == before


def test_a_backend_that_does_not_isolate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A broken bwrap that runs the command straight on the host: the probe must notice.
    monkeypatch.setattr(Sandbox, "_bwrap_argv", lambda self, inner: ["/usr/bin/env", f"HOME={HOME}", *inner])
    monkeypatch.setattr(sandbox_module.os, "geteuid", lambda: 1000)  # no privilege drop around it
    with pytest.raises(SandboxUnavailable, match="bwrap: probe failed"):
        Sandbox(backend="bwrap")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (make system-deps)")
def test_auto_prefers_bubblewrap() -> None:
    with Sandbox() as box:
        assert box.backend == "bwrap"
