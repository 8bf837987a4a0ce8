"""POST /v1/messages (and /v1/messages/count_tokens) through the official `anthropic` SDK.

The hub's origin is the SDK's base URL; Claude-format requests are routed to any provider, here
the OpenAI-family mocks.
"""

from __future__ import annotations

import base64
import json

import anthropic
import pytest

from conftest import NATIVE_PROVIDERS, header, unique_model

# Upstreams the Anthropic ingress is exercised against (provider prefix, mock name).
UPSTREAMS = ["openai", "deepseek"]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def claude(hub) -> anthropic.Anthropic:
    c = anthropic.Anthropic(base_url=hub.url, api_key=hub.admin_key, max_retries=0, timeout=30.0)
    yield c
    c.close()


@pytest.mark.parametrize("provider", UPSTREAMS)
def test_plain_message(hub, mocks, claude, provider):
    mock = mocks[provider]
    model = mock.scenario(
        unique_model(),
        text="Paris is the capital.",
        usage={"prompt_tokens": 25, "completion_tokens": 5, "cached_tokens": 5},
    )
    raw = claude.messages.with_raw_response.create(
        model=f"{provider}/{model}",
        max_tokens=100,
        system="You are terse.",
        messages=[{"role": "user", "content": "Capital of France?"}],
        stop_sequences=["END"],
        metadata={"user_id": "user-42"},
    )
    msg = raw.parse()
    assert msg.type == "message" and msg.role == "assistant"
    assert msg.id.startswith("msg_")
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Paris is the capital."
    assert msg.stop_reason == "end_turn"
    # Anthropic's input_tokens exclude cache reads
    assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (20, 5, 5)
    assert msg._request_id == raw.headers.get("x-request-id")

    body = mock.last_request_for(model)["body"]
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}
    assert body["messages"][1] == {"role": "user", "content": "Capital of France?"}
    assert body["user"] == "user-42"
    assert body["stop"] == ["END"]
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 100

    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["ingress"] == "anthropic"
    assert rec["status"] == "success"
    assert rec["provider"] == provider
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cache_read_tokens"]) == (25, 5, 5)


@pytest.mark.parametrize("provider", UPSTREAMS)
def test_stream_with_sdk_helper(hub, mocks, claude, provider):
    mock = mocks[provider]
    model = mock.scenario(
        unique_model(),
        text="one two three four",
        chunks=4,
        usage={"prompt_tokens": 17, "completion_tokens": 4},
    )
    with claude.messages.stream(
        model=f"{provider}/{model}",
        max_tokens=100,
        messages=[{"role": "user", "content": "Count."}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers.get("x-request-id")
    assert "".join(pieces) == "one two three four"
    assert len(pieces) == 4, f"the hub merged stream chunks: {pieces}"
    assert [b.type for b in final.content] == ["text"]
    assert final.content[0].text == "one two three four"
    assert final.stop_reason == "end_turn"
    # final numbers arrive in message_delta (message_start only has the hub's estimate)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (17, 4)
    rec = hub.require_usage(rid)
    assert rec["ingress"] == "anthropic" and rec["stream"] is True
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (17, 4)


@pytest.mark.parametrize("provider", UPSTREAMS)
def test_tools_round_trip(hub, mocks, claude, provider):
    mock = mocks[provider]
    model = mock.scenario(
        unique_model(),
        tool_calls=[{"id": "call_w1", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}],
    )
    question = {"role": "user", "content": "Weather in Paris?"}
    msg = claude.messages.create(
        model=f"{provider}/{model}",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
        messages=[question],
    )
    assert msg.stop_reason == "tool_use"
    uses = [b for b in msg.content if b.type == "tool_use"]
    assert len(uses) == 1
    assert (uses[0].id, uses[0].name, uses[0].input) == ("call_w1", "get_weather", {"city": "Paris"})
    sent = mock.last_request_for(model)["body"]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"] == WEATHER_TOOL["input_schema"]

    # second turn: the assistant's tool_use and the caller's tool_result go back upstream
    model2 = mock.scenario(unique_model(), text="It is 18C in Paris.")
    msg2 = claude.messages.create(
        model=f"{provider}/{model2}",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_w1", "content": "18C"}]},
        ],
    )
    assert msg2.content[0].text == "It is 18C in Paris."
    sent = mock.last_request_for(model2)["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    call = sent[1]["tool_calls"][0]
    assert call["id"] == "call_w1" and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert sent[2]["tool_call_id"] == "call_w1" and sent[2]["content"] == "18C"


def test_stream_tool_calls_reassemble(hub, mocks, claude):
    calls = [
        {"id": "call_s1", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        {"id": "call_s2", "name": "get_weather", "arguments": json.dumps({"city": "Rome"})},
    ]
    model = mocks.openai.scenario(unique_model(), text="Checking both.", tool_calls=calls)
    with claude.messages.stream(
        model=f"openai/{model}",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "Paris and Rome?"}],
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking both."
    assert [(b.id, b.input) for b in final.content[1:]] == [("call_s1", {"city": "Paris"}), ("call_s2", {"city": "Rome"})]
    assert final.stop_reason == "tool_use"
    starts = [e.index for e in events if e.type == "content_block_start"]
    stops = [e.index for e in events if e.type == "content_block_stop"]
    assert starts == stops == [0, 1, 2]


def test_image_input_reaches_the_upstream(hub, mocks, claude):
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
    model = mocks.openai.scenario(unique_model(), text="A tiny image.")
    claude.messages.create(
        model=f"openai/{model}",
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ],
    )
    parts = mocks.openai.last_request_for(model)["body"]["messages"][0]["content"]
    assert parts[0] == {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    assert parts[2] == {"type": "text", "text": "What is this?"}


def test_count_tokens(hub, mocks, claude):
    model = unique_model()
    r = claude.messages.count_tokens(
        model=f"openai/{model}",
        system="You are terse.",
        messages=[{"role": "user", "content": "hello world"}],
    )
    assert r.input_tokens > 0
    raw = claude.messages.with_raw_response.count_tokens(
        model=f"openai/{model}", messages=[{"role": "user", "content": "hello world"}]
    )
    assert raw.headers.get("x-aigne-hub-estimated") == "true"
    assert raw.parse().input_tokens == 3 + 3 + 2  # o200k: "hello world" = 2, plus message overhead
    rec = hub.require_usage(raw.headers.get("request-id"))
    assert rec["endpoint"] == "count_tokens" and rec["status"] == "success"
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (0, 0), "counting consumes nothing"
    assert mocks.openai.requests_for(model) == [], "counting must not call the upstream"


# ------------------------------------------------------------------ errors


def _assert_anthropic_error(body, type_: str) -> None:
    assert body["type"] == "error", body
    assert body["error"]["type"] == type_, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


def test_bad_key_401(hub, mocks):
    model = mocks.openai.scenario(unique_model(), text="never")
    c = anthropic.Anthropic(base_url=hub.url, api_key="sk-definitely-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as ei:
        c.messages.create(model=f"openai/{model}", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 401
    _assert_anthropic_error(ei.value.body, "authentication_error")
    assert mocks.openai.requests_for(model) == [], "unauthenticated call reached the upstream"


def test_bearer_auth_also_works(hub, mocks):
    model = mocks.openai.scenario(unique_model(), text="ok")
    c = anthropic.Anthropic(base_url=hub.url, auth_token=hub.admin_key, max_retries=0)
    msg = c.messages.create(model=f"openai/{model}", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text == "ok"
    req = mocks.openai.last_request_for(model)
    assert header(req, "authorization") == "Bearer sk-test", "the hub must use its own upstream key"


def test_missing_max_tokens_400(hub):
    r = hub.http.post(
        "/v1/messages",
        headers={"x-api-key": hub.admin_key, "anthropic-version": "2023-06-01"},
        json={"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 400, r.text
    body = r.json()
    _assert_anthropic_error(body, "invalid_request_error")
    assert "max_tokens" in body["error"]["message"]
    rec = hub.require_usage(r.headers.get("request-id"))
    assert rec["status"] == "failed" and rec["http_status"] == 400 and rec["ingress"] == "anthropic"


def test_invalid_block_400(hub, claude):
    with pytest.raises(anthropic.BadRequestError) as ei:
        claude.messages.create(
            model="openai/gpt-4o-mini",
            max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "tool_use", "id": "x", "name": "f", "input": {}}]}],
        )
    _assert_anthropic_error(ei.value.body, "invalid_request_error")
    assert "messages.0.content.0.type" in ei.value.body["error"]["message"]


def test_unknown_model_404(hub, claude):
    with pytest.raises(anthropic.NotFoundError) as ei:
        claude.messages.create(model="nosuch/model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    _assert_anthropic_error(ei.value.body, "not_found_error")
    assert "nosuch/model" in ei.value.body["error"]["message"]


def test_rate_limit_429_with_retry_after(hub, mocks, claude):
    model = mocks.openai.scenario(unique_model(), error={"status": 429, "retry_after": 3})
    with pytest.raises(anthropic.RateLimitError) as ei:
        claude.messages.create(model=f"openai/{model}", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    _assert_anthropic_error(ei.value.body, "rate_limit_error")
    assert ei.value.response.headers.get("retry-after") == "3"


def test_overloaded_upstream_is_529(hub, mocks, claude):
    model = mocks.openai.scenario(unique_model(), error={"status": 503})
    with pytest.raises(anthropic.OverloadedError) as ei:
        claude.messages.create(model=f"openai/{model}", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert ei.value.status_code == 529
    _assert_anthropic_error(ei.value.body, "overloaded_error")


def test_mid_stream_error_raises_in_the_sdk(hub, mocks, claude):
    model = mocks.openai.scenario(unique_model(), text="alpha beta gamma delta", chunks=4, error_after_chunks=2)
    got = []
    with pytest.raises(anthropic.APIStatusError) as ei:
        with claude.messages.stream(
            model=f"openai/{model}", max_tokens=50, messages=[{"role": "user", "content": "x"}]
        ) as stream:
            for text in stream.text_stream:
                got.append(text)
    assert "".join(got), "text before the error was lost"
    assert ei.value.body["type"] == "error"
    assert "openai" in ei.value.body["error"]["message"]


def test_body_over_limit_413(small_hub):
    c = anthropic.Anthropic(base_url=small_hub.url, api_key=small_hub.admin_key, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as ei:
        c.messages.create(model="openai/gpt-4o-mini", max_tokens=10, messages=[{"role": "user", "content": "x" * 8000}])
    assert ei.value.status_code == 413
    _assert_anthropic_error(ei.value.body, "request_too_large")
    rec = small_hub.require_usage(ei.value.response.headers.get("request-id"))
    assert rec["status"] == "failed" and rec["http_status"] == 413 and rec["ingress"] == "anthropic"


# ------------------------------------------------------------------ reasoning and cancellation


def test_reasoning_becomes_thinking_blocks(hub, mocks, claude):
    """DeepSeek's reasoning_content reaches an Anthropic caller as a thinking block, JSON and stream."""
    model = mocks.deepseek.scenario(unique_model(), reasoning="First think, then answer.", text="Forty-two.")
    msg = claude.messages.create(
        model=f"deepseek/{model}", max_tokens=100, messages=[{"role": "user", "content": "Answer?"}]
    )
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[0].thinking == "First think, then answer."
    assert msg.content[1].text == "Forty-two."
    with claude.messages.stream(
        model=f"deepseek/{model}", max_tokens=100, messages=[{"role": "user", "content": "Answer?"}]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "First think, then answer."
    assert final.content[1].text == "Forty-two."
    deltas = {e.delta.type for e in events if e.type == "content_block_delta"}
    assert deltas == {"thinking_delta", "text_delta"}

    # the thinking goes back upstream as the assistant turn's reasoning
    model2 = mocks.deepseek.scenario(unique_model(), text="ok")
    claude.messages.create(
        model=f"deepseek/{model2}",
        max_tokens=100,
        messages=[
            {"role": "user", "content": "Answer?"},
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in final.content]},
            {"role": "user", "content": "Why?"},
        ],
    )
    sent = mocks.deepseek.last_request_for(model2)["body"]["messages"][1]
    assert sent["role"] == "assistant" and sent["content"] == "Forty-two."


def test_stream_cancel_leaves_cancelled_record(hub, mocks, claude):
    words = " ".join(f"w{i}" for i in range(60))
    model = mocks.openai.scenario(unique_model(), text=words, chunks=60, chunk_delay_ms=100)
    with claude.messages.stream(
        model=f"openai/{model}", max_tokens=100, messages=[{"role": "user", "content": "Go."}]
    ) as stream:
        rid = stream.response.headers.get("x-request-id")
        first = next(iter(stream.text_stream))
        assert first
    # leaving the block closed the connection after the first text
    rec = hub.wait_usage(rid, lambda r: r.get("status") == "cancelled", timeout=5.0)
    assert rec is not None and rec["status"] == "cancelled", rec
    assert rec["ingress"] == "anthropic" and rec["stream"] is True


# ------------------------------------------------------------------ native upstreams
#
# The shared hub is wired to the Anthropic, Gemini and Bedrock mocks too (conftest NATIVE_PROVIDERS).

@pytest.fixture
def native(hub, mocks, claude):
    return hub, mocks, claude


@pytest.fixture
def claude_upstream(hub, mocks, claude):
    return hub, mocks["anthropic"], claude


@pytest.mark.parametrize("provider", NATIVE_PROVIDERS)
def test_native_upstream_plain_and_stream(native, provider):
    hub, natives, claude = native
    mock = natives[provider]
    model = mock.scenario(unique_model(), text="one two three", usage={"prompt_tokens": 21, "completion_tokens": 3})
    raw = claude.messages.with_raw_response.create(
        model=f"{provider}/{model}",
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Count to three."}],
    )
    msg = raw.parse()
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text == "one two three"
    assert msg.stop_reason == "end_turn"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (21, 3)
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["provider"] == ("google" if provider == "gemini" else provider)
    assert rec["ingress"] == "anthropic"

    with claude.messages.stream(
        model=f"{provider}/{model}", max_tokens=100, messages=[{"role": "user", "content": "Count to three."}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "one two three"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (21, 3)


@pytest.mark.parametrize("provider", NATIVE_PROVIDERS)
def test_native_upstream_tools(native, provider):
    hub, natives, claude = native
    mock = natives[provider]
    model = mock.scenario(
        unique_model(),
        tool_calls=[{"id": "toolu_n1", "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}],
    )
    question = {"role": "user", "content": "Weather in Oslo?"}
    with claude.messages.stream(
        model=f"{provider}/{model}", max_tokens=100, tools=[WEATHER_TOOL], messages=[question]
    ) as stream:
        first = stream.get_final_message()
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(b.name, b.input) for b in uses] == [("get_weather", {"city": "Oslo"})]
    assert first.stop_reason == "tool_use"
    model2 = mock.scenario(unique_model(), text="Cold.")
    msg = claude.messages.create(
        model=f"{provider}/{model2}",
        max_tokens=100,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "-3C"}]},
        ],
    )
    assert msg.content[0].text == "Cold."
    assert "-3C" in json.dumps(mock.requests()[-1]["body"]), "the tool result did not reach the upstream"


def test_claude_upstream_plain(claude_upstream):
    hub, mock, claude = claude_upstream
    model = mock.scenario(
        unique_model("claude"),
        text="Bonjour.",
        usage={"prompt_tokens": 40, "completion_tokens": 3, "cached_tokens": 10, "cache_write_tokens": 5},
    )
    raw = claude.messages.with_raw_response.create(
        model=f"anthropic/{model}",
        max_tokens=200,
        system=[{"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"}],
        stop_sequences=["END"],
    )
    msg = raw.parse()
    assert msg.content[0].text == "Bonjour."
    assert msg.stop_reason == "end_turn"
    # Anthropic's usage survives the canonical round trip unchanged
    u = msg.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens, u.output_tokens) == (25, 10, 5, 3)
    sent = mock.last_request_for(model)
    assert header(sent, "x-api-key") == "sk-test", "the hub must use its own upstream key"
    body = sent["body"]
    assert body["max_tokens"] == 200
    assert body["system"] in ("Answer in French.", [{"type": "text", "text": "Answer in French."}])
    assert body["messages"] in (
        [{"role": "user", "content": "Hello"}],
        [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
    )
    assert body["stop_sequences"] == ["END"]
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["ingress"] == "anthropic" and rec["provider"] == "anthropic"
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cache_read_tokens"], rec["cache_write_tokens"]) == (40, 3, 10, 5)


def test_claude_upstream_stream_with_thinking(claude_upstream):
    hub, mock, claude = claude_upstream
    model = mock.scenario(
        unique_model("claude"),
        reasoning="Let me think.",
        text="The answer is four.",
        usage={"prompt_tokens": 30, "completion_tokens": 12},
    )
    with claude.messages.stream(
        model=f"anthropic/{model}",
        max_tokens=8000,
        thinking={"type": "enabled", "budget_tokens": 4096},
        messages=[{"role": "user", "content": "2+2?"}],
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
        rid = stream.response.headers.get("x-request-id")
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think."
    assert final.content[1].text == "The answer is four."
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (30, 12)
    starts = [e.index for e in events if e.type == "content_block_start"]
    assert starts == [0, 1]
    # the thinking budget reached the upstream as extended thinking
    assert mock.last_request_for(model)["body"]["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    rec = hub.require_usage(rid)
    assert rec["provider"] == "anthropic" and rec["stream"] is True
    assert (rec["prompt_tokens"], rec["completion_tokens"]) == (30, 12)


def test_claude_upstream_tools_round_trip(claude_upstream):
    hub, mock, claude = claude_upstream
    model = mock.scenario(
        unique_model("claude"),
        tool_calls=[{"id": "toolu_01A", "name": "get_weather", "arguments": json.dumps({"city": "Paris"})}],
    )
    question = {"role": "user", "content": "Weather in Paris?"}
    with claude.messages.stream(
        model=f"anthropic/{model}",
        max_tokens=200,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "any"},
        messages=[question],
    ) as stream:
        first = stream.get_final_message()
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(b.id, b.name, b.input) for b in uses] == [("toolu_01A", "get_weather", {"city": "Paris"})]
    assert first.stop_reason == "tool_use"
    body = mock.last_request_for(model)["body"]
    assert body["tools"][0]["name"] == "get_weather"
    assert body["tools"][0]["input_schema"] == WEATHER_TOOL["input_schema"]
    assert body["tool_choice"]["type"] == "any"

    model2 = mock.scenario(unique_model("claude"), text="18C and sunny.")
    msg = claude.messages.create(
        model=f"anthropic/{model2}",
        max_tokens=200,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": "18C"}]},
        ],
    )
    assert msg.content[0].text == "18C and sunny."
    sent = mock.last_request_for(model2)["body"]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    use = [b for b in sent[1]["content"] if b["type"] == "tool_use"][0]
    assert (use["id"], use["name"], use["input"]) == ("toolu_01A", "get_weather", {"city": "Paris"})
    result = [b for b in sent[2]["content"] if b["type"] == "tool_result"][0]
    assert result["tool_use_id"] == "toolu_01A"
    assert result["content"] in ("18C", [{"type": "text", "text": "18C"}])


def test_claude_upstream_overloaded_is_529(claude_upstream):
    hub, mock, claude = claude_upstream
    model = mock.scenario(unique_model("claude"), error={"status": 529})
    with pytest.raises(anthropic.OverloadedError) as ei:
        claude.messages.create(model=f"anthropic/{model}", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    _assert_anthropic_error(ei.value.body, "overloaded_error")
    assert "anthropic" in ei.value.body["error"]["message"]


# ------------------------------------------------------------------ extended thinking + tool loop
#
# Claude Code's loop: thinking on, the model thinks and calls a tool, the client sends the whole
# assistant turn back (thinking blocks with their signatures first) with the tool result. The mocks
# check signatures like the real APIs, so a gateway that drops or alters them fails here.


def _ask(claude, stream: bool, **kw):
    if not stream:
        return claude.messages.create(**kw), []
    with claude.messages.stream(**kw) as s:
        events = list(s)
        return s.get_final_message(), events


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("provider", ["anthropic", "bedrock"])
def test_extended_thinking_tool_loop(native, provider, stream):
    hub, natives, claude = native
    mock = natives[provider]
    thought = "The user wants Oslo's weather; I should call get_weather."
    model = mock.scenario(
        unique_model("claude"),
        reasoning=thought,
        redacted_reasoning="hidden reasoning",
        tool_calls=[{"id": "toolu_think1", "name": "get_weather", "arguments": json.dumps({"city": "Oslo"})}],
    )
    thinking = {"type": "enabled", "budget_tokens": 2048}
    question = {"role": "user", "content": "Weather in Oslo?"}
    first, events = _ask(
        claude, stream, model=f"{provider}/{model}", max_tokens=4096, thinking=thinking,
        tools=[WEATHER_TOOL], messages=[question],
    )
    assert [b.type for b in first.content] == ["thinking", "redacted_thinking", "tool_use"]
    assert first.content[0].thinking == thought
    signature = first.content[0].signature
    assert signature, "the thinking block lost its signature"
    assert first.content[1].data
    assert first.stop_reason == "tool_use"
    if stream:
        deltas = [e.delta for e in events if e.type == "content_block_delta"]
        assert [d.signature for d in deltas if d.type == "signature_delta"] == [signature]
        starts = [e.content_block.type for e in events if e.type == "content_block_start"]
        assert starts == ["thinking", "redacted_thinking", "tool_use"]

    turn = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_think1", "content": "-3C"}]}
    model2 = mock.scenario(unique_model("claude"), reasoning="It is cold.", text="Cold: -3C.")
    second, _ = _ask(
        claude, stream, model=f"{provider}/{model2}", max_tokens=4096, thinking=thinking,
        tools=[WEATHER_TOOL], messages=[question, turn, result],
    )
    assert second.content[-1].text == "Cold: -3C."
    sent = json.dumps(mock.requests()[-1]["body"])
    assert signature in sent and first.content[1].data in sent

    # What the real API says when a gateway drops the thinking block or alters its signature.
    dropped = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content[2:]]}
    with pytest.raises(anthropic.BadRequestError) as ei:
        claude.messages.create(
            model=f"{provider}/{model2}", max_tokens=4096, thinking=thinking, tools=[WEATHER_TOOL],
            messages=[question, dropped, result],
        )
    _assert_anthropic_error(ei.value.body, "invalid_request_error")
    assert "Expected `thinking` or `redacted_thinking`, but found `tool_use`" in ei.value.body["error"]["message"]
    tampered = json.loads(json.dumps(turn))
    tampered["content"][0]["signature"] = "x" + signature
    with pytest.raises(anthropic.BadRequestError) as ei:
        claude.messages.create(
            model=f"{provider}/{model2}", max_tokens=4096, thinking=thinking, tools=[WEATHER_TOOL],
            messages=[question, tampered, result],
        )
    assert "Invalid `signature` in `thinking` block" in ei.value.body["error"]["message"]


@pytest.mark.parametrize("provider", NATIVE_PROVIDERS)
def test_count_tokens_asks_the_provider(native, provider):
    """Anthropic, Gemini and Bedrock upstreams count tokens themselves (the mock answers the scripted
    count, which no estimate would produce); a failing count falls back to the flagged estimate."""
    hub, natives, claude = native
    mock = natives[provider]
    model = mock.scenario(unique_model(), usage={"prompt_tokens": 4242, "completion_tokens": 1})
    messages = [{"role": "user", "content": "hello world"}]
    raw = claude.messages.with_raw_response.count_tokens(model=f"{provider}/{model}", system="S", messages=messages)
    assert raw.parse().input_tokens == 4242
    assert raw.headers.get("x-aigne-hub-estimated") is None
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["endpoint"] == "count_tokens" and (rec["prompt_tokens"], rec["completion_tokens"]) == (0, 0)
    broken = mock.scenario(unique_model(), error={"status": 500})
    raw = claude.messages.with_raw_response.count_tokens(model=f"{provider}/{broken}", system="S", messages=messages)
    assert raw.headers.get("x-aigne-hub-estimated") == "true"
    # o200k: "S" = 1, "hello world" = 2; 3 per message + 3 for priming
    assert raw.parse().input_tokens == 3 + (3 + 1) + (3 + 2)
