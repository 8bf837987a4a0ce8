"""Raw wire checks the SDK would not notice (it tolerates a missing [DONE], for one)."""

from __future__ import annotations

import json

import pytest

from conftest import PROVIDERS, unique_model

USER_MSG = [{"role": "user", "content": "wire"}]


def _sse(hub, body):
    """POST a streaming chat and return (response, [data payloads as str])."""
    with hub.http.stream("POST", "/v1/chat/completions", json=body, headers=hub.auth()) as r:
        lines = [ln for ln in r.iter_lines()]
    datas = [ln[len("data:"):].strip() for ln in lines if ln.startswith("data:")]
    return r, lines, datas


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("include_usage", [False, True], ids=["no-usage", "usage"])
def test_sse_wire_format(hub, mocks, provider, include_usage):
    model = mocks[provider].scenario(unique_model(), text="w1 w2 w3", usage={"prompt_tokens": 2, "completion_tokens": 3})
    body = {"model": f"{provider}/{model}", "messages": USER_MSG, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    r, lines, datas = _sse(hub, body)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert datas, lines
    assert datas[-1] == "[DONE]", f"stream must end with data: [DONE], got {datas[-1]!r}"
    assert datas.count("[DONE]") == 1
    for ln in lines:
        assert ln == "" or ln.startswith("data:") or ln.startswith(":"), f"unexpected SSE line {ln!r}"
    chunks = [json.loads(d) for d in datas[:-1]]
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1, f"all chunks of one completion share one id: {ids}"
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == model
        assert isinstance(c["created"], int)
        assert "error" not in c
    with_usage = [c for c in chunks if c.get("usage")]
    if include_usage:
        assert len(with_usage) == 1 and with_usage[0] is chunks[-1] and chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["prompt_tokens"] == 2 and chunks[-1]["usage"]["completion_tokens"] == 3
    else:
        assert with_usage == []
        assert all(c["choices"] for c in chunks)


def test_sse_upstream_drop_has_no_done(hub, mocks):
    model = mocks.openai.scenario(unique_model(), text="a b c d e f", drop_after_chunks=2)
    body = {"model": f"openai/{model}", "messages": USER_MSG, "stream": True}
    try:
        r, lines, datas = _sse(hub, body)
    except Exception:
        return  # the hub aborted the response: the caller sees a broken stream, which is right
    assert "[DONE]" not in datas, "an upstream drop must not end with a clean [DONE]"
    assert any('"error"' in d for d in datas), f"no error event after the upstream dropped: {datas}"


def test_sse_midstream_error_event_shape(hub, mocks):
    model = mocks.openai.scenario(unique_model(), text="a b c d e f", error_after_chunks=2)
    body = {"model": f"openai/{model}", "messages": USER_MSG, "stream": True}
    r, lines, datas = _sse(hub, body)
    errs = [json.loads(d) for d in datas if d != "[DONE]" and "error" in json.loads(d)]
    assert len(errs) == 1, datas
    err = errs[0]["error"]
    assert isinstance(err.get("message"), str) and err["message"]
    assert "type" in err


def test_json_response_shape(hub, mocks):
    model = mocks.xai.scenario(unique_model(), text="shape")
    r = hub.http.post("/v1/chat/completions", json={"model": f"xai/{model}", "messages": USER_MSG}, headers=hub.auth())
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    b = r.json()
    assert b["object"] == "chat.completion"
    assert isinstance(b["id"], str) and b["id"]
    assert isinstance(b["created"], int)
    assert b["model"] == model
    assert b["choices"][0]["index"] == 0
    assert b["choices"][0]["message"] == {**b["choices"][0]["message"], "role": "assistant", "content": "shape"}
    u = b["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
