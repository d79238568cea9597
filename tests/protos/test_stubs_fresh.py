"""The committed *_pb2 stubs must equal what `make protos` generates now."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    shutil.copytree(ROOT / "protos" / "meshserve", tmp_path / "meshserve")
    for stale in (tmp_path / "meshserve" / "v1").glob("*_pb2*"):
        stale.unlink()
    shutil.copy(ROOT / "protos" / "gen.sh", tmp_path / "gen.sh")
    env_python = Path(sys.executable).parent
    subprocess.run(
        ["bash", str(tmp_path / "gen.sh")],
        check=True,
        env={"PATH": f"{env_python}:/usr/bin:/bin"},
    )
    committed = sorted(p.name for p in (ROOT / "protos/meshserve/v1").glob("*_pb2*"))
    fresh = sorted(p.name for p in (tmp_path / "meshserve/v1").glob("*_pb2*"))
    assert committed == fresh
    _, mismatch, errors = filecmp.cmpfiles(
        ROOT / "protos/meshserve/v1", tmp_path / "meshserve/v1", committed, shallow=False
    )
    assert not mismatch and not errors, f"stale stubs, run `make protos`: {mismatch + errors}"


def test_stubs_import_as_one_package() -> None:
    from protos.meshserve.v1 import encoder_pb2_grpc, gateway_pb2_grpc, lm_pb2_grpc

    assert hasattr(gateway_pb2_grpc, "GatewayServicer")
    assert hasattr(encoder_pb2_grpc, "EncoderStub")
    assert hasattr(lm_pb2_grpc, "LanguageModelStub")
