"""The committed stubs are what protos/llmos/v1/syscalls.proto generates."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ("syscalls_pb2.py", "syscalls_pb2.pyi", "syscalls_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "protos" / "gen.py"), "--out", str(tmp_path)], check=True)
    for name in FILES:
        fresh, committed = (tmp_path / name).read_text(), (ROOT / "syscalls" / "v1" / name).read_text()
        assert fresh == committed, f"syscalls/v1/{name} is stale: run `python protos/gen.py` and commit it"


def test_stubs_import_under_the_llmos_namespace():
    from llmos.syscalls.v1 import syscalls_pb2, syscalls_pb2_grpc

    service = syscalls_pb2.DESCRIPTOR.services_by_name["Syscalls"]
    assert service.full_name == "llmos.v1.Syscalls"
    assert {m.name for m in service.methods} == {
        "Spawn", "Read", "Write", "Wait", "Kill", "Renice", "Fork", "Pipe", "Ps", "Stat", "MemInfo", "Devices", "Migrate", "Drain", "Models",
        "LoadModel", "UnloadModel", "CreateModel", "ShowModel", "TagModel", "RemoveModel", "Dmesg", "Shutdown", "Whoami", "CreateToken", "ListTokens", "RevokeToken",
        "Stats", "Usage", "Eval", "Train"}
    assert hasattr(syscalls_pb2_grpc, "SyscallsStub")
