"""llmosd's configuration: defaults < TOML file < LLMOS_* environment < flags."""
from pathlib import Path

import pytest

from llmos import config
from llmos.syscalls.sdk.paths import resolve_target


def test_defaults_follow_xdg(tmp_path):
    cfg = config.load([], env={"XDG_STATE_HOME": str(tmp_path)})
    assert cfg.state_dir == tmp_path / "llmos" and cfg.socket_path == tmp_path / "llmos" / "llmosd.sock"
    assert cfg.store_path == tmp_path / "llmos" / "models" and cfg.model == "smollm2-135m"
    assert config.load([], env={"HOME": str(tmp_path)}).state_dir.name == "llmos"


def test_file_then_env_then_flags(tmp_path):
    f = tmp_path / "llmosd.toml"
    f.write_text('kv_memory = "256MiB"\npolicy = "fair"\nthreads = 3\ndevice = "cpu"\n')
    env = {"LLMOS_STATE_DIR": str(tmp_path / "s"), "LLMOS_THREADS": "2", "LLMOS_CONFIG": str(f)}
    cfg = config.load(["--threads", "1", "--kv-pages", "64"], env=env)
    assert (cfg.kv_memory, cfg.policy, cfg.threads, cfg.kv_pages, cfg.device) == (256 << 20, "fair", 1, 64, "cpu")
    assert cfg.state_dir == tmp_path / "s"
    assert config.load(["--model", "none"], env=env).model == ""


@pytest.mark.parametrize("argv, needle", [
    (["--device", "tpu"], "--device"), (["--kv-memory", "lots"], "--kv-memory"), (["--threads", "0"], "--threads"),
    (["--policy", "random"], "--policy"), (["--listen", "nowhere"], "--listen"), (["--grace", "-1"], "--grace"),
    (["--http", "nowhere"], "--http"),
    (["--metrics", "nowhere"], "--metrics"),
])
def test_bad_values_name_their_origin(argv, needle, tmp_path):
    with pytest.raises(config.ConfigError, match=needle):
        config.load(argv, env={"HOME": str(tmp_path)})


def test_bad_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("colour = 'blue'\n")
    with pytest.raises(config.ConfigError, match="unknown key 'colour'"):
        config.load(["--config", str(f)], env={})
    with pytest.raises(config.ConfigError, match="config file"):
        config.load(["--config", str(tmp_path / "missing.toml")], env={})


def test_sizes():
    assert [config.parse_size(s) for s in ("1GiB", "512 MiB", "2g", "1000")] == [1 << 30, 512 << 20, 2 * 10**9, 1000]
    with pytest.raises(ValueError):
        config.parse_size("1 parsec")


def test_clients_find_the_daemon_like_the_daemon(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMOS_SOCKET", raising=False)
    monkeypatch.setenv("LLMOS_STATE_DIR", str(tmp_path))
    assert resolve_target() == f"unix:{tmp_path / 'llmosd.sock'}"
    monkeypatch.setenv("LLMOS_SOCKET", str(tmp_path / "other.sock"))
    assert resolve_target() == f"unix:{tmp_path / 'other.sock'}"
    assert resolve_target("127.0.0.1:7070") == "127.0.0.1:7070"
    assert resolve_target(Path("/x/y.sock")) == "unix:/x/y.sock"


def test_kv_memory_is_auto_unless_given_and_swap_is_bounded_unless_given(tmp_path):
    env = {"HOME": str(tmp_path)}
    cfg = config.load([], env=env)
    assert (cfg.kv_memory, cfg.swap_memory, cfg.swap_pages) == (None, None, None)  # sized by the device
    assert config.load(["--kv-memory", "auto"], env=env).kv_memory is None
    cfg = config.load(["--kv-memory", "2GiB", "--swap-memory", "512MiB", "--swap-pages", "0"], env=env)
    assert (cfg.kv_memory, cfg.swap_memory, cfg.swap_pages) == (2 << 30, 512 << 20, 0)
    assert config.load([], env={**env, "LLMOS_SWAP_MEMORY": "0"}).swap_memory == 0
    for argv, needle in ((["--swap-memory", "-1"], "--swap-memory: not a size"),
                         (["--swap-pages", "-3"], "--swap-pages: must be 0"),
                         (["--kv-memory", "0"], "--kv-memory: must be positive")):
        with pytest.raises(config.ConfigError, match=needle):
            config.load(argv, env=env)
