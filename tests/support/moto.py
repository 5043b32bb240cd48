"""A moto S3 server in a subprocess on 127.0.0.1 that answers like the public IDC buckets:
the three buckets exist, anonymous (unsigned) GET, HEAD and ListObjectsV2 succeed, and
objects are uploaded with a signed client using dummy credentials.

How moto 5 treats anonymous requests (server mode, default settings): it honours a bucket
policy for object GETs (without a policy that allows s3:GetObject to Principal "*", an
unsigned GET of a private object gets 403), but it maps HEAD to the made-up action
``s3:HeadObject``, so a policy that grants s3:GetObject (all that AWS accepts, and what IDC
uses) does not cover an anonymous HEAD. Objects are therefore also uploaded with the
``public-read`` canned ACL, which moto checks for HEAD (and AWS honours too). Listing is
never checked for anonymous callers unless IAM simulation is switched on
(``INITIAL_NO_AUTH_ACTION_COUNT``), which would also reject our dummy-credential uploads,
so it stays off: moto cannot show that a non-public bucket refuses anonymous listing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import botocore.session
from botocore import UNSIGNED
from botocore.config import Config

IDC_BUCKETS: tuple[str, ...] = ("idc-open-data", "idc-open-data-cr", "idc-open-data-two")
DUMMY_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
REGION = "us-east-1"

_clients: dict[str, Any] = {}
_clients_lock = threading.Lock()


def public_read_policy(bucket: str) -> str:
    """The bucket policy of a public IDC bucket: anyone may list it and read its objects."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "PublicRead",
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
                }
            ],
        }
    )


def _new_client(endpoint: str, *, signed: bool) -> Any:
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 2, "mode": "standard"},
        max_pool_connections=16,
        **({} if signed else {"signature_version": UNSIGNED}),
    )
    credentials = DUMMY_CREDENTIALS if signed else {}
    return botocore.session.get_session().create_client(
        "s3", region_name=REGION, endpoint_url=endpoint, config=config, **credentials
    )


def signed_client(endpoint: str) -> Any:
    """A shared botocore S3 client with dummy credentials for ``endpoint`` (closed by
    :func:`close_clients` or when its MotoServer stops)."""
    with _clients_lock:
        client = _clients.get(endpoint)
        if client is None:
            client = _clients[endpoint] = _new_client(endpoint, signed=True)
        return client


def unsigned_client(endpoint: str) -> Any:
    """A new anonymous botocore S3 client, the way idc-sync talks to the IDC buckets.
    The caller closes it."""
    return _new_client(endpoint, signed=False)


def close_clients(endpoint: str | None = None) -> None:
    with _clients_lock:
        endpoints = [endpoint] if endpoint is not None else list(_clients)
        for name in endpoints:
            client = _clients.pop(name, None)
            if client is not None:
                client.close()


def create_public_buckets(endpoint: str, buckets: Iterable[str] = IDC_BUCKETS) -> None:
    client = signed_client(endpoint)
    for bucket in buckets:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        client.put_bucket_policy(Bucket=bucket, Policy=public_read_policy(bucket))


def moto_put(endpoint: str, bucket: str, key: str, data: bytes) -> str:
    """Upload one object (signed, public-read); returns its ETag without quotes."""
    response = signed_client(endpoint).put_object(
        Bucket=bucket, Key=key, Body=data, ACL="public-read"
    )
    return str(response["ETag"]).strip('"')


def moto_put_many(endpoint: str, bucket: str, objects: Mapping[str, bytes]) -> None:
    """Upload many objects over a few threads (moto takes ~2 ms per PUT)."""
    if len(objects) <= 4:
        for key, data in objects.items():
            moto_put(endpoint, bucket, key, data)
        return
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: moto_put(endpoint, bucket, *item), objects.items()))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_command(port: int) -> list[str]:
    script = Path(sys.executable).with_name("moto_server")
    base = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*base, "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """``moto_server`` as a subprocess with the IDC buckets created public. Context manager;
    ``endpoint`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, buckets: Iterable[str] = IDC_BUCKETS, startup_timeout: float = 30.0):
        self.buckets = tuple(buckets)
        self.startup_timeout = startup_timeout
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_dir: Path | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoServer:
        self.port = free_port()
        self._log_dir = Path(tempfile.mkdtemp(prefix="moto-server-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        with (self._log_dir / "moto.log").open("wb") as log:
            self._process = subprocess.Popen(
                _moto_command(self.port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self._wait_until_up()
            create_public_buckets(self.endpoint, self.buckets)
        except BaseException:
            self.close()
            raise
        return self

    def _wait_until_up(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"moto_server exited with {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1) as reply:
                    reply.read()
                return
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(
            f"moto_server did not answer within {self.startup_timeout} s:\n{self.log_tail()}"
        )

    def reset(self) -> None:
        """Forget every bucket and object, then create the public buckets again."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()
        create_public_buckets(self.endpoint, self.buckets)

    def log_tail(self, limit: int = 4000) -> str:
        """The end of moto's own output (it logs every request)."""
        if self._log_dir is None:
            return ""
        return (self._log_dir / "moto.log").read_bytes()[-limit:].decode(errors="replace")

    def close(self) -> None:
        close_clients(self.endpoint)
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_dir is not None:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
