"""First start, the master key, and provider configuration through the admin CLI while serving."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from conftest import LISTEN_RE, PROVIDER_ENV, STARTUP_TIMEOUT_S, _bin, _Proc

OWNER_RE = re.compile(r"owner API key \(shown once, store it now\): (\S+)")


def _clean_env() -> dict[str, str]:
    provider_vars = {e for pair in PROVIDER_ENV.values() for e in pair if e}
    env = {k: v for k, v in os.environ.items() if k not in provider_vars and not k.startswith("HUB_")}
    env.setdefault("RUST_LOG", "info")
    return env


def _serve(name: str, data_dir: Path, env: dict[str, str], work: Path) -> tuple[_Proc, str, list[str]]:
    """Starts `aigne-hub serve`; returns the process, its URL and the stdout lines before it listened."""
    argv = [str(_bin("HUB_BIN", "aigne-hub")), "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
    p = _Proc(name, argv, env, work)
    before: list[str] = []

    def watch(line: str):
        m = LISTEN_RE.search(line)
        if m:
            return m.group(1)
        before.append(line)
        return None

    url = p.wait_line(watch, STARTUP_TIMEOUT_S)
    return p, url, before


def _cli(*args: str, data_dir: Path, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(_bin("HUB_BIN", "aigne-hub")), "admin", "--data-dir", str(data_dir), *args],
        env=env,
        input=stdin.encode() if stdin is not None else None,
        capture_output=True,
        timeout=30,
    )


def test_first_start_creates_data_dir_key_file_and_prints_owner_key_once(tmp_path):
    data_dir = tmp_path / "fresh" / "data"
    env = _clean_env()
    p, url, before = _serve("first-start", data_dir, env, tmp_path)
    try:
        keys = [m.group(1) for line in before if (m := OWNER_RE.search(line))]
        assert len(keys) == 1, f"expected one owner key line before listening, got {before}"
        key = keys[0]
        assert key.startswith("ahk_") and len(key) == 44
        mode = stat.S_IMODE((data_dir / "master.key").stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer ahk_wrong"})
        assert r.status_code == 401
        # The key is stored hashed, never in clear.
        raw = b"".join(f.read_bytes() for f in data_dir.iterdir() if f.is_file() and f.name.startswith("hub.db"))
        assert key.encode() not in raw
    finally:
        p.stop()
    # Second start: nothing printed, the key still works.
    p, url, before = _serve("second-start", data_dir, env, tmp_path)
    try:
        assert not any(OWNER_RE.search(line) for line in before), before
        r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
    finally:
        p.stop()


def test_hub_admin_key_is_an_owner_key_and_no_key_is_printed(tmp_path):
    env = _clean_env() | {"HUB_ADMIN_KEY": "my-chosen-owner-key-123"}
    p, url, before = _serve("admin-key", tmp_path / "data", env, tmp_path)
    try:
        assert not any(OWNER_RE.search(line) for line in before)
        r = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer my-chosen-owner-key-123"})
        assert r.status_code == 200
    finally:
        p.stop()


def test_cli_credentials_are_encrypted_masked_and_picked_up_while_serving(tmp_path):
    secret = f"sk-live-{uuid.uuid4().hex}"
    work = tmp_path
    mock = _Proc(
        "mock-openai-cli",
        [str(_bin("HUB_MOCK_BIN", "hub-mock")), "--flavor", "openai", "--api-key", secret],
        _clean_env(),
        work,
    )
    try:
        info = mock.wait_line(lambda line: json.loads(line) if line.startswith("{") else None, STARTUP_TIMEOUT_S)
        base_url = info["openai"]["base_url"]
        data_dir = work / "data"
        env = _clean_env() | {"HUB_ADMIN_KEY": "cli-owner-key"}
        hub, url, _ = _serve("cli-hub", data_dir, env, work)
        try:
            auth = {"Authorization": "Bearer cli-owner-key"}
            body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth)
            assert r.status_code == 404, r.text  # no provider yet
            assert r.json()["error"]["code"] == "model_not_found"

            r = _cli("provider", "add", "--name", "openai", "--base-url", base_url, data_dir=data_dir, env=env)
            assert r.returncode == 0, r.stderr
            r = _cli("credential", "add", "--provider", "openai", "--value", "-", data_dir=data_dir, env=env, stdin=secret)
            assert r.returncode == 0, r.stderr
            assert secret.encode() not in r.stdout + r.stderr

            # The running server notices within a second.
            deadline = time.monotonic() + 3
            while True:
                r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth)
                if r.status_code == 200 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == "Hello from mock openai."

            listed = _cli("credential", "list", "--json", data_dir=data_dir, env=env)
            assert listed.returncode == 0
            rows = json.loads(listed.stdout)
            assert len(rows) == 1
            assert rows[0]["masked"] == secret[:4] + "*" * 16 + secret[-4:]
            assert "ciphertext" not in rows[0]
            assert secret.encode() not in listed.stdout

            # Never stored or logged in clear.
            raw = b"".join(f.read_bytes() for f in data_dir.iterdir() if f.is_file() and f.name.startswith("hub.db"))
            assert secret.encode() not in raw
            assert secret.encode() not in hub.log_path.read_bytes()

            # Bad input to the CLI is refused without writing anything.
            r = _cli("credential", "add", "--provider", "nosuch", "--value", "x", data_dir=data_dir, env=env)
            assert r.returncode != 0 and b"unknown provider" in r.stderr
            r = _cli("provider", "add", "--name", "openai", "--base-url", "ftp://x", data_dir=data_dir, env=env)
            assert r.returncode != 0
        finally:
            hub.stop()

        # A different master key: the hub refuses to start and says why.
        bad = env | {"HUB_MASTER_KEY": "11" * 32}
        argv = [str(_bin("HUB_BIN", "aigne-hub")), "serve", "--port", "0", "--data-dir", str(data_dir)]
        r = subprocess.run(argv, env=bad, capture_output=True, timeout=30)
        assert r.returncode != 0
        assert b"cannot decrypt stored credential" in r.stderr, r.stderr
        assert secret.encode() not in r.stderr + r.stdout
    finally:
        mock.stop()
