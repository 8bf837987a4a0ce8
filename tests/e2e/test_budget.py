"""Per-key spend budgets through the real binary and the official SDKs: keys made with
`aigne-hub admin key create --budget ...` against the running server's data dir, refused in the
SDKs' own error types before any upstream traffic, and the spend visible on the key."""

from __future__ import annotations

import json
import subprocess
import time

import anthropic
import httpx
import openai
import pytest


def _admin(hub, *args: str) -> str:
    r = subprocess.run(
        [hub._cli, "admin", "--data-dir", str(hub.data_dir), *args],
        env=hub.env,
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    return r.stdout.decode().strip()


def _accepted(hub, key: str) -> bool:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if hub.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
            return True
        time.sleep(0.1)
    return False


def test_budget_keys_from_the_cli_are_enforced_in_the_sdks(hub, mocks):
    user = _admin(hub, "user", "create", "--name", "budget-e2e")
    empty = _admin(hub, "key", "create", "--user", user, "--budget", "0", "--budget-period", "day", "--budget-tz", "Asia/Tokyo")
    roomy = _admin(hub, "key", "create", "--user", user, "--budget", "100")
    assert _accepted(hub, empty) and _accepted(hub, roomy)
    bad = subprocess.run(
        [hub._cli, "admin", "--data-dir", str(hub.data_dir), "key", "create", "--user", user, "--budget", "1", "--budget-tz", "Nowhere/City"],
        env=hub.env,
        capture_output=True,
        timeout=30,
    )
    assert bad.returncode != 0 and b"Nowhere/City" in bad.stderr

    before = len(mocks.openai.requests_for("gpt-4o-mini"))
    c = hub.client(api_key=empty)
    with pytest.raises(openai.RateLimitError) as ei:
        c.chat.completions.create(model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    assert ei.value.code == "budget_exceeded"
    assert ei.value.body["type"] == "insufficient_quota"
    # Retry-After: seconds to the next midnight in Tokyo.
    assert 1 <= int(ei.value.response.headers["retry-after"]) <= 86_400
    claude = anthropic.Anthropic(api_key=empty, base_url=hub.url, max_retries=0, timeout=30.0)
    with pytest.raises(anthropic.RateLimitError) as ei:
        claude.messages.create(model="openai/gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.body["error"]["type"] == "rate_limit_error"
    assert "budget" in ei.value.body["error"]["message"]
    assert len(mocks.openai.requests_for("gpt-4o-mini")) == before

    out = hub.client(api_key=roomy).chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    assert out.choices[0].message.content
    keys = json.loads(_admin(hub, "key", "list", "--json"))
    mine = {k["prefix"]: k for k in keys if k["user_id"] == user}
    shown = next(k for p, k in mine.items() if roomy.startswith(p))
    assert shown["policy"]["budget"] == {"amount": "100", "period": "month", "time_zone": "UTC"}
    assert float(shown["budget_status"]["spent"]) > 0
    assert shown["budget_status"]["resets_at"].endswith("T00:00:00+00:00")
    # The owner of the key sees the same through /api/me.
    r = httpx.get(hub.url + "/api/me/keys", headers={"Authorization": f"Bearer {roomy}"})
    assert r.status_code == 200
    assert {k["budget_status"]["spent"] for k in r.json() if k["id"] == shown["id"]} == {shown["budget_status"]["spent"]}
