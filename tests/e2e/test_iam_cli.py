"""Identity and access through the real binary: `aigne-hub admin team|user|key|audit|rotate-master-key`
against the data dir of a running server, and the admin API over a socket."""

from __future__ import annotations

import json
import threading
import time
import uuid

import httpx

from conftest import STARTUP_TIMEOUT_S, _bin, _Proc
from test_startup_and_cli import _clean_env, _cli, _serve


def _until(pred, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def test_cli_users_keys_policy_revocation_and_rotation_while_serving(tmp_path):
    secret = f"sk-live-{uuid.uuid4().hex}"
    mock = _Proc(
        "mock-openai-iam",
        [str(_bin("HUB_MOCK_BIN", "hub-mock")), "--flavor", "openai", "--api-key", secret],
        _clean_env(),
        tmp_path,
    )
    try:
        info = mock.wait_line(lambda line: json.loads(line) if line.startswith("{") else None, STARTUP_TIMEOUT_S)
        data_dir = tmp_path / "data"
        env = _clean_env() | {"HUB_ADMIN_KEY": "iam-owner-key"}
        hub, url, _ = _serve("iam-hub", data_dir, env, tmp_path)
        try:
            owner = {"Authorization": "Bearer iam-owner-key"}
            r = httpx.put(url + "/api/admin/providers/openai", json={"base_url": info["openai"]["base_url"]}, headers=owner)
            assert r.status_code == 200, r.text
            r = httpx.post(url + "/api/admin/credentials", json={"provider": "openai", "value": secret}, headers=owner)
            assert r.status_code == 201, r.text
            assert r.json()["masked"] == secret[:4] + "*" * 16 + secret[-4:]

            r = _cli("team", "create", "--name", "research", data_dir=data_dir, env=env)
            assert r.returncode == 0, r.stderr
            team = r.stdout.decode().strip()
            assert team.startswith("team_")
            r = _cli("user", "create", "--name", "alice", "--team", "research", data_dir=data_dir, env=env)
            assert r.returncode == 0, r.stderr
            user = r.stdout.decode().strip()
            assert user.startswith("user_")
            r = _cli("key", "create", "--user", user, "--models", "openai/*", "--rpm", "2", data_dir=data_dir, env=env)
            assert r.returncode == 0, r.stderr
            key = r.stdout.decode().strip()
            assert key.startswith("ahk_") and len(key) == 44
            bad = _cli("user", "create", "--name", "bob", "--role", "emperor", data_dir=data_dir, env=env)
            assert bad.returncode != 0 and b"--role" in bad.stderr

            auth = {"Authorization": f"Bearer {key}"}
            body = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            # The running server accepts the new key within a second.
            r = _until(lambda: (resp := httpx.post(url + "/v1/chat/completions", json=body, headers=auth)).status_code == 200 and resp)
            assert r, "the CLI's key was not accepted within the deadline"
            r = httpx.post(url + "/v1/chat/completions", json=body | {"model": "deepseek/deepseek-chat"}, headers=auth)
            assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
            # --rpm 2: the refused call above did not count; the second call passes, the third waits.
            assert httpx.post(url + "/v1/chat/completions", json=body, headers=auth).status_code == 200
            r = httpx.post(url + "/v1/chat/completions", json=body, headers=auth)
            assert r.status_code == 429, r.text
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert 1 <= int(r.headers["retry-after"]) <= 60

            # The member sees their own usage only; the admin API is closed to them.
            r = httpx.get(url + "/api/me/usage", headers=auth)
            assert r.status_code == 200 and r.json() and all(u["user_id"] == user for u in r.json())
            assert httpx.get(url + "/api/admin/users", headers=auth).status_code == 403
            doc = httpx.get(url + "/api/openapi.json").json()
            assert "/api/admin/keys" in doc["paths"]

            # Rotation while requests flow: none fails.
            failures: list[str] = []
            stop = threading.Event()

            def load():
                with httpx.Client() as c:
                    while not stop.is_set():
                        resp = c.post(url + "/v1/chat/completions", json=body, headers=owner)
                        if resp.status_code != 200:
                            failures.append(f"{resp.status_code} {resp.text}")

            t = threading.Thread(target=load)
            t.start()
            time.sleep(0.3)
            r = _cli("rotate-master-key", data_dir=data_dir, env=env)
            time.sleep(1.5)
            stop.set()
            t.join()
            assert r.returncode == 0, r.stderr
            assert b"1 credential(s) re-encrypted" in r.stdout, r.stdout
            assert not failures, failures[:3]
            assert len(list(data_dir.glob("master.key.retired-*"))) == 1

            # Revocation from the CLI reaches the running server within a second.
            listed = json.loads(_cli("key", "list", "--json", data_dir=data_dir, env=env).stdout)
            kid = next(k["id"] for k in listed if k["user_id"] == user)
            assert all(key not in json.dumps(k) for k in listed)
            r = _cli("key", "revoke", "--id", kid, data_dir=data_dir, env=env)
            assert r.returncode == 0, r.stderr
            assert _until(lambda: httpx.get(url + "/v1/models", headers=auth).status_code == 401)
            audit = _cli("audit", "list", "--json", data_dir=data_dir, env=env)
            actions = {a["action"] for a in json.loads(audit.stdout)}
            assert {"team.create", "user.create", "key.create", "key.revoke", "vault.rotate", "credential.create"} <= actions
            for f in data_dir.iterdir():
                if f.is_file() and f.name.startswith("hub.db"):
                    assert secret.encode() not in f.read_bytes()
            assert secret.encode() not in hub.log_path.read_bytes()
        finally:
            hub.stop()
        # After the rotation a fresh start decrypts everything with the rotated key files.
        hub, url, _ = _serve("iam-hub-2", data_dir, env, tmp_path)
        try:
            r = httpx.post(
                url + "/v1/chat/completions",
                json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": "Bearer iam-owner-key"},
            )
            assert r.status_code == 200, r.text
        finally:
            hub.stop()
    finally:
        mock.stop()
