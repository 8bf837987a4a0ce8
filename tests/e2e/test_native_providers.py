"""The native-protocol upstreams (Anthropic Messages, Gemini, Bedrock Converse) behind
`/v1/chat/completions`, driven by the official `openai` SDK: plain, streamed, tool calls, errors,
and the usage record. The mocks check each provider's own protocol rules (Anthropic headers and
max_tokens, Gemini key, Bedrock SigV4 signature), so a 200 here means the hub spoke it right.
"""

from __future__ import annotations

import json

import openai
import pytest

from conftest import MOCK_API_KEY, header, unique_model

# (mock name, model prefix the caller uses)
NATIVE = [("anthropic", "anthropic"), ("gemini", "google"), ("bedrock", "bedrock")]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def requests_for(mock, model: str) -> list[dict]:
    """Requests naming `model` in the body (Anthropic) or in the path (Gemini, Bedrock)."""
    return [
        r
        for r in mock.requests()
        if model in r.get("path", "") or (isinstance(r.get("body"), dict) and r["body"].get("model") == model)
    ]


@pytest.mark.parametrize("name,prefix", NATIVE)
def test_plain_chat(hub, mocks, client, name, prefix):
    mock = mocks[name]
    model = mock.scenario(
        unique_model(),
        text="Paris is the capital.",
        usage={"prompt_tokens": 40, "completion_tokens": 6, "cached_tokens": 10},
    )
    raw = client.chat.completions.with_raw_response.create(
        model=f"{prefix}/{model}",
        messages=[{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Capital of France?"}],
    )
    resp = raw.parse()
    assert resp.choices[0].message.content == "Paris is the capital."
    assert resp.choices[0].finish_reason == "stop"
    # Normalised: prompt includes the cached tokens on every provider.
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (40, 6)
    assert resp.usage.prompt_tokens_details.cached_tokens == 10
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["provider"] == prefix
    assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cache_read_tokens"]) == (40, 6, 10)

    (req,) = requests_for(mock, model)
    body = req["body"]
    if name == "anthropic":
        assert header(req, "x-api-key") == MOCK_API_KEY
        assert header(req, "anthropic-version") == "2023-06-01"
        assert body["system"][0]["text"] == "Be terse."
        assert body["max_tokens"] > 0
    elif name == "gemini":
        assert header(req, "x-goog-api-key") == MOCK_API_KEY
        assert body["systemInstruction"]["parts"][0]["text"] == "Be terse."
        assert req["path"].endswith(":generateContent")
    else:
        auth = header(req, "authorization")
        assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={MOCK_API_KEY}/")
        assert "/us-west-2/bedrock/aws4_request" in auth
        assert body["system"] == [{"text": "Be terse."}]
        assert req["path"].endswith("/converse")


@pytest.mark.parametrize("name,prefix", NATIVE)
def test_stream(hub, mocks, client, name, prefix):
    model = mocks[name].scenario(
        unique_model(), text="one two three four", usage={"prompt_tokens": 12, "completion_tokens": 4}
    )
    chunks = list(
        client.chat.completions.create(
            model=f"{prefix}/{model}",
            messages=[{"role": "user", "content": "count"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "one two three four"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2, "streamed, not buffered"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and (usage[0].prompt_tokens, usage[0].completion_tokens) == (12, 4)


@pytest.mark.parametrize("name,prefix", NATIVE)
def test_tools_round_trip(hub, mocks, client, name, prefix):
    mock = mocks[name]
    model = unique_model()
    mock.scenario(model, tool_calls=[{"name": "get_weather", "arguments": json.dumps({"city": "Paris"})}])
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    resp = client.chat.completions.create(model=f"{prefix}/{model}", messages=msgs, tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    # Streamed: the argument fragments reassemble.
    chunks = list(
        client.chat.completions.create(model=f"{prefix}/{model}", messages=msgs, tools=[WEATHER_TOOL], stream=True)
    )
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
        for tc in c.choices[0].delta.tool_calls
    )
    assert json.loads(args) == {"city": "Paris"}

    # The result goes back in the provider's own shape.
    mock.scenario(model, text="18C and sunny.")
    msgs += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "18C, sunny"},
    ]
    resp = client.chat.completions.create(model=f"{prefix}/{model}", messages=msgs, tools=[WEATHER_TOOL])
    assert resp.choices[0].message.content == "18C and sunny."
    body = requests_for(mock, model)[-1]["body"]
    text = json.dumps(body)
    assert "18C, sunny" in text
    if name == "anthropic":
        assert body["messages"][-1]["content"][0]["type"] == "tool_result"
        assert body["messages"][-1]["content"][0]["tool_use_id"] == call.id
    elif name == "gemini":
        assert body["contents"][-1]["parts"][0]["functionResponse"]["name"] == "get_weather"
    else:
        assert body["messages"][-1]["content"][0]["toolResult"]["toolUseId"] == call.id


@pytest.mark.parametrize("name,prefix", NATIVE)
def test_upstream_rate_limit_is_429(hub, mocks, client, name, prefix):
    model = mocks[name].scenario(unique_model(), error={"status": 429, "retry_after": 3})
    with pytest.raises(openai.RateLimitError) as exc:
        client.with_options(max_retries=0).chat.completions.create(
            model=f"{prefix}/{model}", messages=[{"role": "user", "content": "hi"}]
        )
    assert exc.value.status_code == 429
    if name != "bedrock":  # Bedrock sends no retry hint
        assert exc.value.response.headers.get("retry-after") == "3"


# (mock name, model prefix, an embedding model id the provider module accepts)
NATIVE_EMBED = [("gemini", "google", "gemini-embedding"), ("bedrock", "bedrock", "amazon.titan-embed-text-v2")]


@pytest.mark.parametrize("name,prefix,family", NATIVE_EMBED)
def test_embeddings_float_and_base64(hub, mocks, client, name, prefix, family):
    mock = mocks[name]
    model = mock.scenario(f"{family}-{unique_model()}", embedding_dims=12)
    raw = client.embeddings.with_raw_response.create(
        model=f"{prefix}/{model}", input=["first text", "second text"], encoding_format="float"
    )
    resp = raw.parse()
    assert [d.index for d in resp.data] == [0, 1]
    assert all(isinstance(d.embedding, list) and len(d.embedding) == 12 for d in resp.data)
    assert resp.data[0].embedding != resp.data[1].embedding
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["provider"] == prefix and rec["status"] == "success"
    if name == "bedrock":  # Titan takes one input per call
        assert len(requests_for(mock, model)) == 2
    # The SDK's default asks for base64; the hub encodes the floats as OpenAI does.
    b64 = client.embeddings.create(model=f"{prefix}/{model}", input=["first text", "second text"])
    for a, b in zip(resp.data, b64.data):
        assert b.embedding == pytest.approx(a.embedding, rel=1e-6)


def test_anthropic_sdk_to_anthropic_upstream(hub, mocks):
    """Claude format in, Claude format upstream: /v1/messages routed to the Anthropic provider."""
    import anthropic

    mock = mocks.anthropic
    model = mock.scenario(unique_model(), text="Bonjour.", usage={"prompt_tokens": 30, "completion_tokens": 2, "cached_tokens": 10})
    with anthropic.Anthropic(base_url=hub.url, api_key=hub.admin_key, max_retries=0) as claude:
        msg = claude.messages.create(
            model=f"anthropic/{model}",
            max_tokens=50,
            system="Answer in French.",
            messages=[{"role": "user", "content": "Hello"}],
        )
        assert msg.content[0].text == "Bonjour."
        assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens, msg.usage.output_tokens) == (20, 10, 2)
        with claude.messages.stream(
            model=f"anthropic/{model}", max_tokens=50, messages=[{"role": "user", "content": "Hello"}]
        ) as stream:
            assert "".join(stream.text_stream) == "Bonjour."
    body = requests_for(mock, model)[0]["body"]
    assert body["max_tokens"] == 50
    assert body["system"][0]["text"] == "Answer in French."
