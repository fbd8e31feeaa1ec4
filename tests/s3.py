"""A real S3 API for the object-storage tests: moto in server mode, started and stopped by the tests themselves.

``s3`` (function scope) points the standard AWS variables (``AWS_ENDPOINT_URL`` included) at one moto server for
the whole session and creates a fresh bucket per test, so pyarrow, boto and any subprocess the test starts all
reach the same store exactly as they would reach AWS. Import the fixtures into a test module to use them.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

import pytest

_BUCKETS = itertools.count()


@dataclass
class S3:
    """The bucket of one test: ``uri(key)`` makes ``s3://bucket/key``; ``client`` is a boto3 S3 client."""

    bucket: str
    endpoint: str
    client: object

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}" if key else f"s3://{self.bucket}"

    def keys(self, prefix: str = "") -> list[str]:
        """The objects under ``prefix``, without the empty ``dir/`` markers pyarrow leaves when it deletes the
        last object under a prefix (it keeps the "directory" alive)."""
        listed = self.client.list_objects_v2(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in listed.get("Contents", []) if not item["Key"].endswith("/"))

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto S3 server on a free local port for the session; its URL."""
    server_module = pytest.importorskip("moto.server", reason="the object-storage tests need moto[server]")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def point_aws_at(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the standard AWS variables for the moto server at ``endpoint`` (any credentials do for moto)."""
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def s3(moto_endpoint, monkeypatch) -> S3:
    """The AWS variables pointed at the moto server, and a new empty bucket."""
    import boto3

    point_aws_at(moto_endpoint, monkeypatch)
    bucket = f"minilm-test-{os.getpid()}-{next(_BUCKETS)}"
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    client.create_bucket(Bucket=bucket)
    return S3(bucket, moto_endpoint, client)
