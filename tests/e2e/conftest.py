"""End-to-end fixtures: the real `aigne-hub` server over a real socket, fed by `hub-mock` upstreams.

Session fixtures start one `hub-mock --all` (seven OpenAI-family mocks, plus Anthropic, Gemini and Bedrock) and one `aigne-hub serve`
on a temporary data dir with every provider pointed at its mock. A second hub with a tiny body
limit is started lazily for the 413 test.

Run:
    cargo build -p hub-server -p hub-testkit
    scripts/setup-python.sh
    .venv/bin/pytest -q tests/e2e            # E2E_KEEP_TMP=1 keeps data dirs and process logs

Binaries: $HUB_BIN / $HUB_MOCK_BIN, else <repo>/target/debug/{aigne-hub,hub-mock}.

Tests must stay independent: each one scripts its mock through a *scenario* keyed by a unique
upstream model name (`unique_model()`), never through shared FIFO state.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import openai
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = ["openai", "deepseek", "xai", "openrouter", "doubao", "poe", "ollama"]
# Native-protocol upstreams (their own wire; see test_native_providers.py).
NATIVE_PROVIDERS = ["anthropic", "gemini", "bedrock"]
MOCK_API_KEY = "sk-test"
ADMIN_KEY = "sk-e2e-admin-" + uuid.uuid4().hex
LISTEN_RE = re.compile(r"aigne-hub listening on (http://[0-9.]+:\d+)")
STARTUP_TIMEOUT_S = 30.0

# provider -> (key env, base url env); Ollama needs no key.
PROVIDER_ENV = {
    "openai": ("OPENAI_API_KEY", "OPENAI_BASE_URL"),
    "deepseek": ("DEEPSEEK_API_KEY", "DEEPSEEK_BASE_URL"),
    "xai": ("XAI_API_KEY", "XAI_BASE_URL"),
    "openrouter": ("OPEN_ROUTER_API_KEY", "OPEN_ROUTER_BASE_URL"),
    "doubao": ("DOUBAO_API_KEY", "DOUBAO_BASE_URL"),
    "poe": ("POE_API_KEY", "POE_BASE_URL"),
    "ollama": (None, "OLLAMA_BASE_URL"),
    "anthropic": ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"),
    "gemini": ("GEMINI_API_KEY", "GEMINI_BASE_URL"),
    # Bedrock: the access key id is the mock's api key; the secret is below.
    "bedrock": ("AWS_ACCESS_KEY_ID", "BEDROCK_BASE_URL"),
}
# The secret the Bedrock mock verifies SigV4 signatures with (hub-mock's default).
BEDROCK_ENV = {"AWS_SECRET_ACCESS_KEY": "mock-aws-secret-access-key", "AWS_REGION": "us-west-2"}


def _bin(env: str, name: str) -> Path:
    p = Path(os.environ.get(env) or REPO_ROOT / "target" / "debug" / name)
    if not p.is_file() or not os.access(p, os.X_OK):
        pytest.exit(
            f"{name} binary not found at {p}: build it with "
            f"`cargo build -p hub-server -p hub-testkit` or set {env}",
            returncode=2,
        )
    return p


def unique_model(prefix: str = "t") -> str:
    """A fresh upstream model id, used as a mock scenario key."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# --------------------------------------------------------------------------------------------
# processes


class _Proc:
    """A child process whose stdout is drained into a queue (lines) and a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
        )
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                self._log.write(b"[stdout] " + raw)
                self._log.flush()
            except ValueError:  # log closed at teardown
                pass
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\r\n"))

    def wait_line(self, pred: Callable[[str], Any], timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                line = self.lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            got = pred(line)
            if got:
                return got
        self.stop()
        raise RuntimeError(
            f"{self.name} did not print its startup line within {timeout}s "
            f"(exit={self.proc.poll()}); log:\n{self.tail()}"
        )

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        self._thread.join(timeout=2)
        try:
            self._log.close()
        except Exception:
            pass


# --------------------------------------------------------------------------------------------
# mock upstreams


class Mock:
    """Control API of one hub-mock upstream (one provider flavor)."""

    def __init__(self, provider: str, origin: str, base_url: str):
        self.provider = provider
        self.origin = origin.rstrip("/")
        self.base_url = base_url.rstrip("/")
        self.http = httpx.Client(base_url=self.origin, timeout=10.0)

    def scenario(self, model: str, **script: Any) -> str:
        """Every request whose body `model` equals `model` is answered by `script`."""
        r = self.http.post("/__mock/scenarios", json={"model": model, "script": script})
        assert r.status_code < 300, f"{self.provider} mock rejected scenario: {r.status_code} {r.text}"
        return model

    def script(self, **script: Any) -> None:
        """FIFO script for the next request to this mock (not parallel-safe: prefer scenario)."""
        r = self.http.post("/__mock/scripts", json=script)
        assert r.status_code < 300, f"{self.provider} mock rejected script: {r.status_code} {r.text}"

    def requests(self) -> list[dict[str, Any]]:
        r = self.http.get("/__mock/requests")
        r.raise_for_status()
        out = []
        for req in r.json():
            body = req.get("body")
            if isinstance(body, str):
                try:
                    body = json.loads(body) if body else None
                except ValueError:
                    pass
            req = dict(req, body=body)
            out.append(req)
        return out

    def requests_for(self, model: str) -> list[dict[str, Any]]:
        return [
            r for r in self.requests() if isinstance(r.get("body"), dict) and r["body"].get("model") == model
        ]

    def last_request_for(self, model: str) -> dict[str, Any]:
        reqs = self.requests_for(model)
        assert reqs, f"{self.provider} mock recorded no request with model {model!r}"
        return reqs[-1]

    def stats(self) -> dict[str, int]:
        r = self.http.get("/__mock/stats")
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        self.http.post("/__mock/reset").raise_for_status()


def header(req: dict[str, Any], name: str) -> str | None:
    """Case-insensitive header lookup on a recorded mock request (headers: [[k, v], ...] or {k: v})."""
    hs = req.get("headers") or []
    items: Iterable = hs.items() if isinstance(hs, dict) else hs
    for k, v in items:
        if k.lower() == name.lower():
            return v
    return None


class Mocks(dict):
    def __getattr__(self, name: str) -> Mock:
        try:
            return self[name]
        except KeyError as e:
            raise AttributeError(name) from e


@pytest.fixture(scope="session")
def work_dir():
    d = Path(tempfile.mkdtemp(prefix="aigne-e2e-"))
    yield d
    if os.environ.get("E2E_KEEP_TMP"):
        print(f"\nkept e2e tmp dir: {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def mocks(work_dir) -> Iterable[Mocks]:
    exe = _bin("HUB_MOCK_BIN", "hub-mock")
    p = _Proc("hub-mock", [str(exe), "--all", "--api-key", MOCK_API_KEY], dict(os.environ), work_dir)

    def parse(line: str):
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            return json.loads(line)
        except ValueError:
            return None

    try:
        info = p.wait_line(parse, STARTUP_TIMEOUT_S)
        missing = [name for name in PROVIDERS + NATIVE_PROVIDERS if name not in info]
        assert not missing, f"hub-mock --all did not start mocks for {missing}: {info}"
        ms = Mocks(
            {name: Mock(name, info[name]["origin"], info[name]["base_url"]) for name in PROVIDERS + NATIVE_PROVIDERS}
        )
        yield ms
    finally:
        p.stop()


# --------------------------------------------------------------------------------------------
# hub


class Hub:
    def __init__(self, proc: _Proc, url: str, data_dir: Path, env: dict[str, str]):
        self.proc = proc
        self.url = url.rstrip("/")
        self.v1 = self.url + "/v1"
        self.data_dir = data_dir
        self.env = env
        self.admin_key = env["HUB_ADMIN_KEY"]
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        self._cli = str(_bin("HUB_BIN", "aigne-hub"))

    def client(self, api_key: str | None = None, **kw: Any) -> openai.OpenAI:
        kw.setdefault("max_retries", 0)
        kw.setdefault("timeout", 30.0)
        return openai.OpenAI(api_key=api_key or self.admin_key, base_url=self.v1, **kw)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    # usage records (read through the CLI, same data dir, while the server runs)
    def usage_list(self, limit: int = 300) -> list[dict[str, Any]]:
        r = subprocess.run(
            [self._cli, "admin", "usage", "list", "--data-dir", str(self.data_dir), "--limit", str(limit), "--json"],
            env=self.env,
            capture_output=True,
            timeout=30,
        )
        assert r.returncode == 0, (
            f"`aigne-hub admin usage list` failed ({r.returncode}): {r.stderr.decode(errors='replace')}"
        )
        out = r.stdout.decode()
        try:
            data = json.loads(out)
        except ValueError:
            # tolerate log lines before the JSON document
            start = out.find("[")
            data = json.loads(out[start:])
        assert isinstance(data, list), f"usage list --json is not an array: {out[:300]}"
        return data

    def usage_for_model(self, requested_model: str) -> list[dict[str, Any]]:
        return [r for r in self.usage_list() if r.get("requested_model") == requested_model]

    def usage_record(self, request_id: str) -> dict[str, Any] | None:
        for rec in self.usage_list():
            if rec.get("id") == request_id:
                return rec
        return None

    def require_usage(self, request_id: str | None) -> dict[str, Any]:
        """The record for this call must exist NOW (durability: committed before the response ended)."""
        assert request_id, "response carried no x-request-id header"
        rec = self.usage_record(request_id)
        assert rec is not None, f"no usage record with id {request_id} right after the response ended"
        return rec

    def wait_usage(self, request_id: str, pred: Callable[[dict], bool] = lambda r: True, timeout: float = 5.0):
        deadline = time.monotonic() + timeout
        rec = None
        while time.monotonic() < deadline:
            rec = self.usage_record(request_id)
            if rec is not None and pred(rec):
                return rec
            time.sleep(0.1)
        return rec


def _start_hub(name: str, mocks: Mocks, work_dir: Path, extra_env: dict[str, str] | None = None) -> Hub:
    exe = _bin("HUB_BIN", "aigne-hub")
    data_dir = work_dir / f"{name}-data"
    data_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not any(k == e for pair in PROVIDER_ENV.values() for e in pair if e)}
    for k in ("AWS_SESSION_TOKEN", *BEDROCK_ENV):
        env.pop(k, None)
    env["HUB_ADMIN_KEY"] = ADMIN_KEY
    env.setdefault("RUST_LOG", "info")
    for prov, (key_env, url_env) in PROVIDER_ENV.items():
        env[url_env] = mocks[prov].base_url
        if key_env:
            env[key_env] = MOCK_API_KEY
    env.update(BEDROCK_ENV)
    env.update(extra_env or {})
    argv = [str(exe), "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", str(data_dir)]
    p = _Proc(name, argv, env, work_dir)

    def parse(line: str):
        m = LISTEN_RE.search(line)
        return m.group(1) if m else None

    url = p.wait_line(parse, STARTUP_TIMEOUT_S)
    hub = Hub(p, url, data_dir, env)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        try:
            last = hub.http.get("/healthz")
            if last.status_code == 200:
                return hub
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.1)
    p.stop()
    raise RuntimeError(f"{name}: /healthz never answered 200 (last: {last!r}); log:\n{p.tail()}")


@pytest.fixture(scope="session")
def hub(mocks, work_dir) -> Iterable[Hub]:
    h = _start_hub("aigne-hub", mocks, work_dir)
    try:
        yield h
    finally:
        h.proc.stop()


@pytest.fixture(scope="session")
def small_hub(mocks, work_dir) -> Iterable[Hub]:
    """A second hub whose request body limit is 4096 bytes (413 tests)."""
    h = _start_hub("aigne-hub-small", mocks, work_dir, {"HUB_MAX_BODY_BYTES": "4096"})
    try:
        yield h
    finally:
        h.proc.stop()


@pytest.fixture
def client(hub) -> openai.OpenAI:
    c = hub.client()
    yield c
    c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the server logs to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        h = item.funcargs.get("hub")
        if isinstance(h, Hub):
            rep.sections.append(("aigne-hub log (tail)", h.proc.tail(40)))


# --------------------------------------------------------------------------------------------
# assertion helpers


def assert_openai_error(body: Any, *, code: str | None = None) -> dict[str, Any]:
    """`body` is the full JSON body: {"error":{"message","type","param","code"}}."""
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not an OpenAI error body: {body!r}"
    err = body["error"]
    for k in ("message", "type", "param", "code"):
        assert k in err, f"error body lacks {k!r}: {body!r}"
    assert isinstance(err["message"], str) and err["message"], body
    assert isinstance(err["type"], str) and err["type"], body
    if code is not None:
        assert err["code"] == code, body
    return err


def usage_dict(u: Any) -> dict[str, Any]:
    return u.model_dump() if hasattr(u, "model_dump") else dict(u)
