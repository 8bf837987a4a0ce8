"""POST /v1/chat/completions with stream=true (SSE), through the official OpenAI SDK."""

from __future__ import annotations

import json
import time

import pytest

from conftest import PROVIDERS, unique_model

USER_MSG = [{"role": "user", "content": "Count."}]
TEXT = "alpha beta gamma delta epsilon"


def _collect(stream):
    chunks = list(stream)
    content = "".join(
        (c.choices[0].delta.content or "") for c in chunks if c.choices and c.choices[0].delta is not None
    )
    return chunks, content


def _finish_reasons(chunks):
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_without_include_usage(hub, mocks, client, provider):
    """No usage reaches a caller that did not ask for it, whatever the upstream sends."""
    mock = mocks[provider]
    model = mock.scenario(unique_model(), text=TEXT, usage={"prompt_tokens": 13, "completion_tokens": 5})
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}/{model}", messages=USER_MSG, stream=True)
    assert raw.status_code == 200
    assert raw.headers.get("content-type", "").startswith("text/event-stream")
    rid = raw.headers.get("x-request-id")
    chunks, content = _collect(raw.parse())
    # the stream has ended ([DONE] received): the record must already be committed
    rec = hub.require_usage(rid)

    assert content == TEXT
    assert chunks, "no chunks"
    for c in chunks:
        assert c.object == "chat.completion.chunk"
        assert c.model == model
        assert c.usage is None, f"usage leaked to a caller that did not ask for it: {c}"
        assert c.choices, f"a choices:[] chunk reached a caller that did not ask for usage: {c}"
    assert _finish_reasons(chunks) == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"

    # the hub always asks upstream for usage
    body = mock.last_request_for(model)["body"]
    assert body["stream"] is True
    assert (body.get("stream_options") or {}).get("include_usage") is True, body

    assert rec["stream"] is True
    assert rec["status"] == "success"
    assert rec["http_status"] == 200
    assert rec["provider"] == provider
    assert rec["endpoint"] == "chat"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (13, 5)
    assert rec["estimated"] is False
    assert rec["ttfb_ms"] is not None and rec["latency_ms"] is not None
    assert rec["ttfb_ms"] <= rec["latency_ms"]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_with_include_usage(hub, mocks, client, provider):
    mock = mocks[provider]
    model = mock.scenario(unique_model(), text=TEXT, usage={"prompt_tokens": 21, "completion_tokens": 6})
    raw = client.chat.completions.with_raw_response.create(
        model=f"{provider}/{model}",
        messages=USER_MSG,
        stream=True,
        stream_options={"include_usage": True},
    )
    rid = raw.headers.get("x-request-id")
    chunks, content = _collect(raw.parse())
    rec = hub.require_usage(rid)

    assert content == TEXT
    last = chunks[-1]
    assert last.choices == [], f"last chunk must be the usage chunk with choices == []: {last}"
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (21, 6, 27)
    assert [c for c in chunks[:-1] if c.usage is not None] == [], "usage must only be on the final chunk"
    assert all(c.choices for c in chunks[:-1])
    assert _finish_reasons(chunks) == ["stop"]

    body = mock.last_request_for(model)["body"]
    assert (body.get("stream_options") or {}).get("include_usage") is True, body
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (21, 6)
    assert rec["status"] == "success"


def test_stream_chunking_preserved(hub, mocks, client):
    """The hub must not buffer a stream whole: upstream pieces arrive as separate chunks."""
    model = mocks.openai.scenario(unique_model(), text="one two three four", chunks=4)
    chunks, content = _collect(client.chat.completions.create(model=f"openai/{model}", messages=USER_MSG, stream=True))
    assert content == "one two three four"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 4


def test_stream_first_chunk_not_delayed(hub, mocks, client):
    """First content chunk reaches the caller long before the upstream stream ends."""
    model = mocks.openai.scenario(unique_model(), text="a b c d e f", chunks=6, chunk_delay_ms=300)
    t0 = time.monotonic()
    stream = client.chat.completions.create(model=f"openai/{model}", messages=USER_MSG, stream=True)
    first_content_at = None
    for c in stream:
        if first_content_at is None and c.choices and c.choices[0].delta.content:
            first_content_at = time.monotonic() - t0
    total = time.monotonic() - t0
    assert first_content_at is not None
    assert total >= 1.2, f"stream finished too fast ({total:.2f}s) for a 6x300ms script"
    assert first_content_at < total - 0.9, f"first chunk at {first_content_at:.2f}s of {total:.2f}s: buffered?"


@pytest.mark.parametrize("provider", ["openai", "deepseek", "xai", "openrouter", "ollama"])
def test_stream_tool_calls_reassembled(hub, mocks, client, provider):
    mock = mocks[provider]
    calls = [
        {"id": "call_s1", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        {"id": "call_s2", "name": "get_time", "arguments": json.dumps({"tz": "Europe/Paris"})},
    ]
    model = mock.scenario(unique_model(), tool_calls=calls, usage={"prompt_tokens": 40, "completion_tokens": 20})
    stream = client.chat.completions.create(
        model=f"{provider}/{model}",
        messages=[{"role": "user", "content": "Weather and time in Paris?"}],
        tools=[
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
        ],
        stream=True,
        stream_options={"include_usage": True},
    )
    acc: dict[int, dict] = {}
    finish = []
    usage = None
    for c in stream:
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            if ch.finish_reason:
                finish.append(ch.finish_reason)
            for tc in ch.delta.tool_calls or []:
                slot = acc.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                if tc.id:
                    assert slot["id"] in (None, tc.id), "tool call id changed mid-stream"
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"] += tc.function.arguments
    assert finish == ["tool_calls"]
    got = [acc[i] for i in sorted(acc)]
    assert [(g["id"], g["name"]) for g in got] == [("call_s1", "get_weather"), ("call_s2", "get_time")]
    assert [json.loads(g["arguments"]) for g in got] == [{"city": "Paris"}, {"tz": "Europe/Paris"}]
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (40, 20)


def test_stream_cancel_leaves_cancelled_record(hub, mocks, client):
    mock = mocks.openai
    words = " ".join(f"w{i}" for i in range(60))
    model = mock.scenario(unique_model(), text=words, chunks=60, chunk_delay_ms=100)
    before = mock.stats()
    raw = client.chat.completions.with_raw_response.create(model=f"openai/{model}", messages=USER_MSG, stream=True)
    rid = raw.headers.get("x-request-id")
    stream = raw.parse()
    first = next(iter(stream))
    assert first is not None
    stream.close()  # hang up after the first chunk

    rec = hub.wait_usage(rid, lambda r: r.get("status") == "cancelled", timeout=5.0)
    assert rec is not None, "no usage record after client cancelled the stream"
    assert rec["status"] == "cancelled", rec
    assert rec["stream"] is True

    deadline = time.monotonic() + 5.0
    after = mock.stats()
    while after["streams_cancelled_by_client"] <= before["streams_cancelled_by_client"] and time.monotonic() < deadline:
        time.sleep(0.1)
        after = mock.stats()
    assert after["streams_cancelled_by_client"] >= before["streams_cancelled_by_client"] + 1, (
        f"hub did not cancel the upstream stream: before={before} after={after}"
    )


def test_stream_upstream_error_before_first_byte_is_http_error(hub, mocks, client):
    """The first chunk is awaited before the 200, so an upstream 500 surfaces as a 502 status."""
    import openai

    model = mocks.openai.scenario(unique_model(), error={"status": 500})
    with pytest.raises(openai.APIStatusError) as ei:
        stream = client.chat.completions.create(model=f"openai/{model}", messages=USER_MSG, stream=True)
        list(stream)
    assert ei.value.status_code == 502
    assert "openai" in str(ei.value.message).lower()
    rec = hub.require_usage(ei.value.response.headers.get("x-request-id"))
    assert rec["status"] == "failed"
    assert rec["http_status"] == 502
    assert rec["stream"] is True


@pytest.mark.parametrize("provider", ["openai", "openrouter", "doubao", "deepseek"])
def test_stream_midstream_error_reaches_caller_and_is_recorded(hub, mocks, client, provider):
    import openai

    model = mocks[provider].scenario(unique_model(), text=TEXT, error_after_chunks=2)
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}/{model}", messages=USER_MSG, stream=True)
    rid = raw.headers.get("x-request-id")
    got = []
    with pytest.raises(openai.APIError):
        for c in raw.parse():
            got.append(c)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices), "chunks before the error were lost"
    rec = hub.require_usage(rid)
    assert rec["status"] == "failed", rec
    assert rec["error_class"], rec


def test_stream_upstream_drop_is_not_success(hub, mocks, client):
    """Upstream connection dropped mid-stream: the caller must not see a clean [DONE] end."""
    import openai

    model = mocks.openai.scenario(unique_model(), text=TEXT, drop_after_chunks=2)
    raw = client.chat.completions.with_raw_response.create(model=f"openai/{model}", messages=USER_MSG, stream=True)
    rid = raw.headers.get("x-request-id")
    clean = True
    try:
        chunks = list(raw.parse())
        # ended without an exception: it must at least not pretend to have finished normally
        clean = any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    except (openai.APIError, Exception):
        clean = False
    assert not clean, "an upstream drop was rendered as a normal completion"
    rec = hub.wait_usage(rid, lambda r: r.get("status") in ("failed", "cancelled"), timeout=5.0)
    assert rec is not None and rec["status"] == "failed", rec


def test_concurrent_streams_each_metered(hub, mocks, client):
    """Eight interleaved streams: each gets its own text and its own usage record."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = []
    for i in range(8):
        prov = ["openai", "deepseek", "xai", "openrouter"][i % 4]
        text = " ".join(f"s{i}w{j}" for j in range(6))
        model = mocks[prov].scenario(
            unique_model(), text=text, chunk_delay_ms=20, usage={"prompt_tokens": 100 + i, "completion_tokens": 6}
        )
        jobs.append((prov, model, text, 100 + i))

    def run(job):
        prov, model, text, pt = job
        raw = client.chat.completions.with_raw_response.create(
            model=f"{prov}/{model}", messages=USER_MSG, stream=True, stream_options={"include_usage": True}
        )
        rid = raw.headers.get("x-request-id")
        chunks, content = _collect(raw.parse())
        rec = hub.require_usage(rid)
        return rid, content, chunks[-1].usage, rec

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(run, jobs))
    assert len({r[0] for r in results}) == 8, "request ids must be unique"
    for (prov, model, text, pt), (rid, content, usage, rec) in zip(jobs, results):
        assert content == text
        assert usage.prompt_tokens == pt
        assert rec["upstream_model"] == model and rec["prompt_tokens"] == pt and rec["provider"] == prov


def test_ttfb_and_latency_metered(hub, mocks, client):
    model = mocks.openai.scenario(unique_model(), text="a b c", chunks=3, first_byte_delay_ms=300, chunk_delay_ms=100)
    raw = client.chat.completions.with_raw_response.create(model=f"openai/{model}", messages=USER_MSG, stream=True)
    rid = raw.headers.get("x-request-id")
    list(raw.parse())
    rec = hub.require_usage(rid)
    assert rec["ttfb_ms"] >= 290, rec
    assert rec["latency_ms"] >= rec["ttfb_ms"] + 150, rec
    assert rec["latency_ms"] < 5000, rec


def test_stream_client_request_id(hub, mocks, client):
    import uuid

    model = mocks.doubao.scenario(unique_model(), text="x y")
    cid = "cli-" + uuid.uuid4().hex
    raw = client.chat.completions.with_raw_response.create(
        model=f"doubao/{model}", messages=USER_MSG, stream=True, extra_headers={"x-request-id": cid}
    )
    rid = raw.headers.get("x-request-id")
    list(raw.parse())
    rec = hub.require_usage(rid)
    assert rid != cid
    assert rec["client_request_id"] == cid
