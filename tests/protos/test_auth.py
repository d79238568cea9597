"""The API key rule (`check_bearer`), its interceptor on a real server (health and reflection
stay open), and TLS with a certificate made in the test: accepted with its CA, refused in
plaintext or with another CA."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from protos.auth import ApiKeyInterceptor, bearer_metadata, check_bearer, resolve_api_key
from protos.channels import channel
from protos.server import Server, ServerConfig
from tests.protos.test_server import SERVICE, _register, _running
from tests.tls import self_signed

KEY = "s3cret-key"


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("Bearer s3cret-key", True),
        ("bearer s3cret-key", True),
        (b"Bearer s3cret-key", True),
        ("  Bearer   s3cret-key ", True),
        ("Bearer wrong", False),
        ("Bearer s3cret-key-and-more", False),
        ("Basic s3cret-key", False),
        ("s3cret-key", False),
        ("", False),
        (None, False),
    ],
)
def test_check_bearer(value: str | bytes | None, accepted: bool) -> None:
    assert check_bearer(value, KEY) is accepted


def test_no_key_accepts_nothing() -> None:
    assert not check_bearer("Bearer ", "")


def test_the_key_comes_from_the_flag_the_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESHSERVE_API_KEY", "from-env")
    (tmp_path / "key").write_text("from-file\n")
    assert resolve_api_key("from-flag", str(tmp_path / "key")) == "from-flag"
    assert resolve_api_key(None, str(tmp_path / "key")) == "from-file"
    assert resolve_api_key(None) == "from-env"
    monkeypatch.delenv("MESHSERVE_API_KEY")
    assert resolve_api_key(None) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        resolve_api_key(None, str(tmp_path / "empty"))


def _codes(server: Server, root_certificates: bytes | None = None) -> dict[str, grpc.StatusCode]:
    """Status of a health check, and of the test method without, with a wrong and the right key."""

    def call(address: str, method: str, metadata: tuple = ()) -> grpc.StatusCode:
        with channel(address, root_certificates) as ch:
            try:
                if method == "health":
                    ch.unary_unary(
                        "/grpc.health.v1.Health/Check",
                        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                    )(health_pb2.HealthCheckRequest(), timeout=5)
                else:
                    ch.unary_unary(f"/{SERVICE}/Unary")(b"ok", metadata=metadata, timeout=5)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    async def body(address: str) -> dict[str, grpc.StatusCode]:
        cases = {
            "health": ("health", ()),
            "no key": ("unary", ()),
            "wrong key": ("unary", bearer_metadata("wrong")),
            "key": ("unary", bearer_metadata(KEY)),
        }
        return {
            name: await asyncio.to_thread(call, address, method, metadata)
            for name, (method, metadata) in cases.items()
        }

    return asyncio.run(_running(server, body))


def test_api_key_interceptor_guards_every_method_but_health() -> None:
    server = Server(
        "test", [SERVICE], _register, ServerConfig(port=0), interceptors=[ApiKeyInterceptor(KEY)]
    )
    assert _codes(server) == {
        "health": grpc.StatusCode.OK,
        "no key": grpc.StatusCode.UNAUTHENTICATED,
        "wrong key": grpc.StatusCode.UNAUTHENTICATED,
        "key": grpc.StatusCode.OK,
    }
    refused = server.registry.get_sample_value(
        "meshserve:refused_requests_total",
        {"method": f"/{SERVICE}/Unary", "code": "UNAUTHENTICATED"},
    )
    assert refused == 2.0


def test_tls_accepts_its_ca_and_refuses_plaintext_and_other_cas(tmp_path: Path) -> None:
    files = self_signed(tmp_path)
    other = self_signed(tmp_path, "another-ca")
    config = ServerConfig(port=0, tls_cert=str(files.cert), tls_key=str(files.key))

    def server() -> Server:
        return Server("test", [SERVICE], _register, config)

    assert _codes(server(), files.cert_pem)["key"] == grpc.StatusCode.OK
    assert set(_codes(server()).values()) == {grpc.StatusCode.UNAVAILABLE}  # plaintext
    assert set(_codes(server(), other.cert_pem).values()) == {grpc.StatusCode.UNAVAILABLE}


def test_tls_flags_go_together_and_name_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerConfig(tls_cert="cert.pem")
    config = ServerConfig(tls_cert=str(tmp_path / "nope.crt"), tls_key=str(tmp_path / "k"))
    with pytest.raises(OSError, match=r"--tls-key .*/k: cannot read it"):
        config.credentials()
