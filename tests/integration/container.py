"""Podman for the container test: the base image made from Debian's mirror, the build of
``packaging/Containerfile`` as it is, and the flags that run a container on this kind of
machine.

The recipe starts ``FROM docker.io/library/debian:bookworm-slim``. CI cannot reach
Docker Hub, so ``ensure_base`` makes that image with ``debootstrap`` from Debian's mirror
and imports it under that name, into podman storage of the test's own (``CACHE``: never
the machine's default storage, whose real image it would shadow). The
storage is kept between runs, so a second run neither debootstraps nor rebuilds the
unchanged layers; pip's downloads stay in buildah's cache mount (``/var/tmp``).

Needs root (debootstrap, and a container whose user is another than the caller's),
``podman``, ``runc`` and ``debootstrap`` (``make system-deps``). A missing tool is a
failure with the reason, never a skip.
"""

from __future__ import annotations

import fcntl
import os
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["BASE", "CACHE", "Podman"]

#: The recipe's base image, by the name the recipe gives it.
BASE = "docker.io/library/debian:bookworm-slim"
MIRROR = "http://deb.debian.org/debian"
#: Where the test's podman storage lives between runs (``VIGIL_CONTAINER_CACHE``).
CACHE = Path(os.environ.get("VIGIL_CONTAINER_CACHE") or Path.home() / ".cache" / "vigil-container")
# The apt sources of Docker Hub's debian:bookworm-slim (debootstrap writes bookworm only).
SOURCES = """\
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} is not installed: run `make system-deps`"
    return found


class Podman:
    """``podman`` on storage of its own under ``cache``, run with runc.

    runc, not Debian's default crun: crun refuses a hybrid cgroup hierarchy (a cgroup v2
    mount with a controller beside v1's, as on this project's machines) even with
    ``--cgroups=disabled``. The storage grows by the layers of each new dependency set
    (about 400 MB); delete ``cache`` to reclaim it.
    """

    def __init__(self, cache: Path = CACHE) -> None:
        self.cache = cache
        self.exe = _tool("podman")
        _tool("runc")
        # Runtime state is per boot: under the temporary directory, not the cache.
        run = Path(tempfile.gettempdir()) / f"vigil-container-{os.getuid()}"
        self.globals = [
            "--root", str(cache / "storage"),
            "--runroot", str(run / "storage"),
            "--tmpdir", str(run / "libpod"),
            "--storage-driver", "overlay",
            "--runtime", "runc",
            "--events-backend", "file",
        ]  # fmt: skip

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.exe, *self.globals, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {done.returncode}:\n{done.stderr[-4000:]}"
            )
        return done

    @staticmethod
    def limits() -> list[str]:
        """``--ulimit`` flags within this process's own hard limits: podman's defaults
        for root (1 M open files, 4 M processes) are more than a process without
        CAP_SYS_RESOURCE may set, and runc then fails to start the container."""
        files = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)  # the unit's
        return ["--ulimit", f"nofile={files}:{files}", "--ulimit", "nproc=4096:4096"]

    def ensure_base(self) -> None:
        """``BASE`` in this storage: debootstrapped from ``MIRROR`` the first time."""
        with self._lock():
            if self("image", "exists", BASE, check=False).returncode == 0:
                return
            debootstrap = _tool("debootstrap")
            with tempfile.TemporaryDirectory(dir=self.cache) as tmp:
                root = Path(tmp) / "rootfs"
                done = subprocess.run(
                    [debootstrap, "--variant=minbase", "bookworm", str(root), MIRROR],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                assert done.returncode == 0, f"debootstrap failed:\n{done.stdout[-4000:]}"
                # As Docker Hub's image: no package files, apt sources with updates.
                for folder in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    for path in (root / folder).glob("*"):
                        if path.is_file():
                            path.unlink()
                (root / "etc/apt/sources.list").unlink(missing_ok=True)
                (root / "etc/apt/sources.list.d/debian.sources").write_text(SOURCES)
                tar = subprocess.Popen(
                    ["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                    stdout=subprocess.PIPE,
                )
                imported = subprocess.run(
                    [self.exe, *self.globals, "import", "--change", 'CMD ["bash"]', "-", BASE],
                    stdin=tar.stdout,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                assert tar.stdout is not None
                tar.stdout.close()
                assert tar.wait() == 0 and imported.returncode == 0, imported.stderr

    def build(self, context: Path, containerfile: Path, tag: str, log: Path) -> str:
        """``podman build`` of ``containerfile`` as it is, its output in ``log``; the
        image's id (``tag`` may name another's build by then: worktrees share the cache).

        pip gets this machine's CA bundle as the recipe's ``ca`` secret: CI's egress
        re-signs TLS with a CA that only the machine's bundle holds."""
        iidfile = log.with_suffix(".iid")
        args = ["build", "--network", "host", *self.limits(), "-f", str(containerfile)]
        args += ["--iidfile", str(iidfile)]
        bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        bundle = bundle or "/etc/ssl/certs/ca-certificates.crt"
        if Path(bundle).is_file():
            args += ["--secret", f"id=ca,src={bundle}"]
        with log.open("w") as out:
            done = subprocess.run(
                [self.exe, *self.globals, *args, "-t", tag, str(context)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=3600,
            )
        assert done.returncode == 0, f"podman build failed:\n{log.read_text()[-6000:]}"
        return iidfile.read_text().strip()

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """One maker of the base at a time (two worktrees' tests share the cache)."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with (self.cache / "base.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
