"""The SDK against a real daemon: load_model().generate(), $LLMOS_SOCKET, no daemon; server reflection."""
import grpc
import pytest

MODEL = "tiny-llama"


def test_sdk_load_model_and_env_socket(llmosd, monkeypatch):
    import llmos

    monkeypatch.setenv("LLMOS_SOCKET", str(llmosd.socket))
    model = llmos.load_model("tiny-llama")  # found through LLMOS_SOCKET
    with llmos.Client() as c:
        assert model.generate("Hello", max_tokens=8, ignore_eos=True) == c.generate(MODEL, "Hello", max_tokens=8,
                                                                                     ignore_eos=True)
    assert model.chat([{"role": "user", "content": "Hi"}], max_tokens=3) is not None


def test_sdk_without_a_daemon_says_how_to_start_one(tmp_path):
    import llmos

    with pytest.raises(llmos.DaemonNotRunning, match="start one with `llmosd`"):
        llmos.load_model("tiny-llama", tmp_path / "nothing.sock")


def test_reflection_lists_the_services(llmosd):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(f"unix:{llmosd.socket}") as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert {"llmos.v1.Syscalls", "grpc.health.v1.Health"} <= set(services)
