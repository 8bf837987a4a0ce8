"""Per-provider quirks, as seen by an OpenAI SDK caller and in the usage records."""

from __future__ import annotations

import pytest

from conftest import header, unique_model

USER_MSG = [{"role": "user", "content": "Think, then answer."}]


def _extra(obj, key):
    extra = getattr(obj, "model_extra", None) or {}
    return extra.get(key)


def _stream(client, model, include_usage=True):
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(client.chat.completions.create(model=model, messages=USER_MSG, stream=True, **kw))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join(_extra(c.choices[0].delta, "reasoning_content") or "" for c in chunks if c.choices)
    usage = [c.usage for c in chunks if c.usage is not None]
    return chunks, content, reasoning, usage


# ------------------------------------------------------------------ DeepSeek


DS_USAGE = {"prompt_tokens": 20, "completion_tokens": 30, "cached_tokens": 12, "reasoning_tokens": 10}


def test_deepseek_reasoning_and_cache_hits_json(hub, mocks, client):
    mock = mocks.deepseek
    model = mock.scenario(unique_model(), reasoning="Six times seven.", text="42", usage=DS_USAGE)
    raw = client.chat.completions.with_raw_response.create(model=f"deepseek/{model}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    msg = resp.choices[0].message
    assert msg.content == "42"
    assert _extra(msg, "reasoning_content") == "Six times seven."
    u = resp.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (20, 30, 50)
    assert u.prompt_tokens_details is not None and u.prompt_tokens_details.cached_tokens == 12
    assert u.completion_tokens_details is not None and u.completion_tokens_details.reasoning_tokens == 10
    assert _extra(u, "prompt_cache_hit_tokens") is None, "DeepSeek wire fields must be normalised away"

    assert rec["prompt_tokens"] == 20
    assert rec["completion_tokens"] == 30
    assert rec["cache_read_tokens"] == 12
    assert rec["reasoning_tokens"] == 10


def test_deepseek_reasoning_stream(hub, mocks, client):
    model = mocks.deepseek.scenario(unique_model(), reasoning="Six times seven.", text="forty two", usage=DS_USAGE)
    chunks, content, reasoning, usage = _stream(client, f"deepseek/{model}")
    assert content == "forty two"
    assert reasoning == "Six times seven."
    assert len(usage) == 1 and chunks[-1].choices == []
    u = usage[0]
    assert (u.prompt_tokens, u.completion_tokens) == (20, 30)
    assert u.prompt_tokens_details.cached_tokens == 12
    assert u.completion_tokens_details.reasoning_tokens == 10


# ------------------------------------------------------------------ xAI


def test_xai_completion_includes_reasoning(hub, mocks, client):
    """xAI's wire completion_tokens excludes reasoning; callers get it included."""
    mock = mocks.xai
    usage = {"prompt_tokens": 12, "completion_tokens": 229, "reasoning_tokens": 228, "cached_tokens": 2}
    model = mock.scenario(unique_model(), reasoning="hmm", text="Hi", usage=usage)
    raw = client.chat.completions.with_raw_response.create(model=f"xai/{model}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    u = resp.usage
    assert u.prompt_tokens == 12
    assert u.completion_tokens == 229, "completion_tokens must be xAI completion + reasoning"
    assert u.total_tokens == 241
    assert u.completion_tokens_details.reasoning_tokens == 228
    assert u.prompt_tokens_details.cached_tokens == 2
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["reasoning_tokens"], rec["cache_read_tokens"]) == (
        12,
        229,
        228,
        2,
    )


def test_xai_stream_usage_arithmetic(hub, mocks, client):
    usage = {"prompt_tokens": 5, "completion_tokens": 105, "reasoning_tokens": 100}
    model = mocks.xai.scenario(unique_model(), text="Hello there", usage=usage)
    raw = client.chat.completions.with_raw_response.create(
        model=f"xai/{model}", messages=USER_MSG, stream=True, stream_options={"include_usage": True}
    )
    rid = raw.headers.get("x-request-id")
    chunks = list(raw.parse())
    rec = hub.require_usage(rid)
    u = chunks[-1].usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (5, 105, 110)
    assert (rec["completion_tokens"], rec["reasoning_tokens"]) == (105, 100)


# ------------------------------------------------------------------ OpenRouter


def test_openrouter_headers_and_slash_model_id(hub, mocks, client):
    mock = mocks.openrouter
    upstream_id = "anthropic/claude-3.5-sonnet"
    mock.scenario(upstream_id, text="Hi from Claude via OpenRouter", usage={"prompt_tokens": 9, "completion_tokens": 6})
    raw = client.chat.completions.with_raw_response.create(model=f"openrouter/{upstream_id}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert resp.model == upstream_id
    assert resp.choices[0].message.content == "Hi from Claude via OpenRouter"

    up = mock.last_request_for(upstream_id)
    assert up["body"]["model"] == upstream_id
    assert header(up, "HTTP-Referer"), f"HTTP-Referer not sent upstream: {up['headers']}"
    assert header(up, "X-Title"), f"X-Title not sent upstream: {up['headers']}"
    assert rec["provider"] == "openrouter"
    assert rec["upstream_model"] == upstream_id
    assert rec["requested_model"] == f"openrouter/{upstream_id}"


def test_openrouter_cache_write_tokens(hub, mocks, client):
    usage = {"prompt_tokens": 194, "completion_tokens": 2, "cached_tokens": 0, "cache_write_tokens": 100, "cost": 0.95}
    model = "vendor/" + unique_model()
    mocks.openrouter.scenario(model, text="ok", usage=usage)
    raw = client.chat.completions.with_raw_response.create(model=f"openrouter/{model}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert resp.model == model
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (194, 2)
    assert rec["cache_write_tokens"] == 100
    assert rec["cache_read_tokens"] == 0
    if "provider_cost" in rec:  # OpenRouter reports its own cost: kept as decimal text
        from decimal import Decimal

        assert rec["provider_cost"] is not None and Decimal(str(rec["provider_cost"])) == Decimal("0.95"), rec


def test_openrouter_stream_strips_always_on_usage(hub, mocks, client):
    model = "vendor/" + unique_model()
    mocks.openrouter.scenario(model, text="a b c", usage={"prompt_tokens": 3, "completion_tokens": 3})
    raw = client.chat.completions.with_raw_response.create(model=f"openrouter/{model}", messages=USER_MSG, stream=True)
    rid = raw.headers.get("x-request-id")
    chunks = list(raw.parse())
    rec = hub.require_usage(rid)
    assert all(c.usage is None and c.choices for c in chunks)
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (3, 3)


# ------------------------------------------------------------------ Doubao


def test_doubao_endpoint_id_passes_through(hub, mocks, client):
    mock = mocks.doubao
    ep = "ep-20250101-abcde"
    mock.scenario(ep, text="Doubao endpoint reply", usage={"prompt_tokens": 8, "completion_tokens": 3})
    raw = client.chat.completions.with_raw_response.create(model=f"doubao/{ep}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert resp.model == ep
    assert resp.choices[0].message.content == "Doubao endpoint reply"
    up = mock.last_request_for(ep)
    assert up["body"]["model"] == ep
    assert up["path"].endswith("/api/v3/chat/completions"), up["path"]
    assert rec["upstream_model"] == ep
    assert rec["provider"] == "doubao"


def test_doubao_reasoning(hub, mocks, client):
    model = mocks.doubao.scenario(
        unique_model(), reasoning="Ark thinks.", text="done",
        usage={"prompt_tokens": 4, "completion_tokens": 9, "reasoning_tokens": 5},
    )
    resp = client.chat.completions.create(model=f"doubao/{model}", messages=USER_MSG)
    assert _extra(resp.choices[0].message, "reasoning_content") == "Ark thinks."
    assert resp.usage.completion_tokens_details.reasoning_tokens == 5


# ------------------------------------------------------------------ Poe


def test_poe_missing_usage_is_estimated_json(hub, mocks, client):
    mock = mocks.poe
    model = mock.scenario(unique_model(), text="Poe replies with several words here.", omit_usage=True)
    raw = client.chat.completions.with_raw_response.create(model=f"poe/{model}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert resp.choices[0].message.content == "Poe replies with several words here."
    assert resp.usage is not None, "caller must still get usage when Poe sends none"
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert rec["estimated"] is True
    assert rec["prompt_tokens"] == resp.usage.prompt_tokens
    assert rec["completion_tokens"] == resp.usage.completion_tokens
    assert rec["status"] == "success"


def test_poe_missing_usage_is_estimated_stream(hub, mocks, client):
    model = mocks.poe.scenario(unique_model(), text="one two three four five six", omit_usage=True)
    raw = client.chat.completions.with_raw_response.create(
        model=f"poe/{model}", messages=USER_MSG, stream=True, stream_options={"include_usage": True}
    )
    rid = raw.headers.get("x-request-id")
    chunks = list(raw.parse())
    rec = hub.require_usage(rid)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    u = chunks[-1].usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert rec["estimated"] is True
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (u.prompt_tokens, u.completion_tokens)


# ------------------------------------------------------------------ Ollama


def test_ollama_reasoning_surfaced_as_reasoning_content(hub, mocks, client):
    mock = mocks.ollama
    model = mock.scenario(
        unique_model(), reasoning="Llama ponders.", text="Answer.", usage={"prompt_tokens": 6, "completion_tokens": 4}
    )
    raw = client.chat.completions.with_raw_response.create(model=f"ollama/{model}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    msg = resp.choices[0].message
    assert msg.content == "Answer."
    assert _extra(msg, "reasoning_content") == "Llama ponders."
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (6, 4)
    assert rec["provider"] == "ollama"
    up = mock.last_request_for(model)
    assert up["path"].endswith("/v1/chat/completions"), up["path"]


def test_ollama_reasoning_stream(hub, mocks, client):
    model = mocks.ollama.scenario(unique_model(), reasoning="Llama ponders more.", text="Fine answer")
    chunks, content, reasoning, usage = _stream(client, f"ollama/{model}")
    assert content == "Fine answer"
    assert reasoning == "Llama ponders more."
    assert len(usage) == 1


@pytest.mark.parametrize("provider", ["openai", "deepseek", "xai", "openrouter", "doubao", "poe", "ollama"])
def test_usage_normalised_shape_each_provider(hub, mocks, client, provider):
    """Same normalised usage in, same OpenAI-shaped usage out, for every provider."""
    usage = {"prompt_tokens": 50, "completion_tokens": 20, "cached_tokens": 10, "reasoning_tokens": 5}
    if provider in ("ollama", "poe"):
        # their wire usage has no details: only the totals survive
        usage = {"prompt_tokens": 50, "completion_tokens": 20}
    model = mocks[provider].scenario(unique_model(), text="x", reasoning="r" if provider != "openai" else None, usage=usage)
    raw = client.chat.completions.with_raw_response.create(model=f"{provider}/{model}", messages=USER_MSG)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    u = raw.parse().usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (50, 20, 70)
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (50, 20)
    if "cached_tokens" in usage:
        assert u.prompt_tokens_details.cached_tokens == 10
        assert u.completion_tokens_details.reasoning_tokens == 5
        assert (rec["cache_read_tokens"], rec["reasoning_tokens"]) == (10, 5)


@pytest.mark.parametrize("provider", ["openrouter", "xai"])
def test_reasoning_rendered_as_reasoning_content(hub, mocks, client, provider):
    """OpenRouter's `reasoning` and xAI's `reasoning_content` both reach the caller as `reasoning_content`."""
    model = ("vendor/" if provider == "openrouter" else "") + unique_model()
    mocks[provider].scenario(model, reasoning="Deep thought here.", text="Result.")
    resp = client.chat.completions.create(model=f"{provider}/{model}", messages=USER_MSG)
    assert resp.choices[0].message.content == "Result."
    assert _extra(resp.choices[0].message, "reasoning_content") == "Deep thought here."
    chunks, content, reasoning, usage = _stream(client, f"{provider}/{model}")
    assert content == "Result."
    assert reasoning == "Deep thought here."


def test_deepseek_reasoning_content_kept_on_tool_call_turns_only(hub, mocks, client):
    """DeepSeek thinking mode needs `reasoning_content` passed back on assistant tool-call turns."""
    mock = mocks.deepseek
    model = mock.scenario(unique_model(), text="Done.")
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "reasoning_content": "greeting thoughts"},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "need the weather tool",
            "tool_calls": [
                {"id": "call_ds_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_ds_1", "content": "sunny"},
    ]
    resp = client.chat.completions.create(model=f"deepseek/{model}", messages=messages)
    assert resp.choices[0].message.content == "Done."
    sent = mock.last_request_for(model)["body"]["messages"]
    assert len(sent) == 5
    assert sent[3].get("reasoning_content") == "need the weather tool"
    assert "reasoning_content" not in sent[1] or sent[1]["reasoning_content"] in (None, "")
    assert sent[4]["tool_call_id"] == "call_ds_1"
