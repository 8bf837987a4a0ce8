"""POST /v1/embeddings, POST /v1/images/generations, GET /v1/models."""

from __future__ import annotations

import base64
import math
import struct

import httpx
import pytest

from conftest import MOCK_API_KEY, PROVIDERS, unique_model

EMBED_PROVIDERS = ["openai", "ollama", "doubao", "openrouter"]
IMAGE_PROVIDERS = ["openai", "xai", "doubao"]


def _decode_b64(s: str) -> list[float]:
    raw = base64.b64decode(s)
    assert len(raw) % 4 == 0
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


# ------------------------------------------------------------------ embeddings


@pytest.mark.parametrize("provider", EMBED_PROVIDERS)
def test_embeddings_float(hub, mocks, client, provider):
    mock = mocks[provider]
    model = mock.scenario(unique_model("emb"), embedding_dims=12, usage={"prompt_tokens": 9, "completion_tokens": 0})
    raw = client.embeddings.with_raw_response.create(
        model=f"{provider}/{model}", input=["first text", "second text"], encoding_format="float"
    )
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert resp.object == "list"
    assert resp.model == model
    assert [d.index for d in resp.data] == [0, 1]
    for d in resp.data:
        assert isinstance(d.embedding, list) and len(d.embedding) == 12
        assert all(isinstance(x, float) and math.isfinite(x) for x in d.embedding)
    assert resp.usage.prompt_tokens == 9

    up = mock.last_request_for(model)
    assert up["path"].endswith("/embeddings"), up["path"]
    assert up["body"]["input"] == ["first text", "second text"]

    assert rec["endpoint"] == "embeddings"
    assert rec["provider"] == provider
    assert rec["upstream_model"] == model
    assert rec["prompt_tokens"] == 9
    assert rec["status"] == "success"


@pytest.mark.parametrize("provider", EMBED_PROVIDERS)
def test_embeddings_base64(hub, mocks, client, provider):
    mock = mocks[provider]
    model = mock.scenario(unique_model("emb"), embedding_dims=16)
    floats = client.embeddings.create(model=f"{provider}/{model}", input="same text", encoding_format="float")
    raw = client.embeddings.with_raw_response.create(
        model=f"{provider}/{model}", input="same text", encoding_format="base64"
    )
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    b64 = raw.parse()
    assert len(b64.data) == 1
    emb = b64.data[0].embedding
    assert isinstance(emb, str), "encoding_format=base64 must return a base64 string"
    vec = _decode_b64(emb)
    assert len(vec) == 16
    # the mock is deterministic for the same input: both encodings carry the same vector (as f32)
    want = [struct.unpack("<f", struct.pack("<f", x))[0] for x in floats.data[0].embedding]
    assert vec == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert rec["endpoint"] == "embeddings"


def test_embeddings_sdk_default_base64_decoded(hub, mocks, client):
    """The SDK asks for base64 by default and decodes it: this must round-trip."""
    model = mocks.openai.scenario(unique_model("emb"), embedding_dims=8)
    resp = client.embeddings.create(model=f"openai/{model}", input="hello")
    assert len(resp.data[0].embedding) == 8
    assert all(isinstance(x, float) for x in resp.data[0].embedding)


def test_embeddings_dimensions_forwarded(hub, mocks, client):
    mock = mocks.openai
    model = mock.scenario(unique_model("emb"))
    resp = client.embeddings.create(model=f"openai/{model}", input="x", dimensions=5, encoding_format="float")
    assert len(resp.data[0].embedding) == 5
    assert mock.last_request_for(model)["body"]["dimensions"] == 5


@pytest.mark.parametrize("provider", ["deepseek", "xai", "poe"])
def test_embeddings_unsupported_provider_is_4xx(hub, mocks, client, provider):
    import openai

    model = unique_model("emb")
    with pytest.raises(openai.APIStatusError) as ei:
        client.embeddings.create(model=f"{provider}/{model}", input="x", encoding_format="float")
    assert 400 <= ei.value.status_code < 500
    assert mocks[provider].requests_for(model) == []


# ------------------------------------------------------------------ images


@pytest.mark.parametrize("provider", IMAGE_PROVIDERS)
def test_images_b64(hub, mocks, client, provider):
    mock = mocks[provider]
    img = base64.b64encode(b"\x89PNG fake image bytes " + provider.encode()).decode()
    model = mock.scenario(unique_model("img"), image_b64=img)
    raw = client.images.with_raw_response.generate(
        model=f"{provider}/{model}", prompt="a red cube", n=2, response_format="b64_json"
    )
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    resp = raw.parse()
    assert len(resp.data) == 2
    assert all(d.b64_json == img for d in resp.data)

    up = mock.last_request_for(model)
    assert up["path"].endswith("/images/generations"), up["path"]
    assert up["body"]["prompt"] == "a red cube"
    assert up["body"].get("n") == 2

    assert rec["endpoint"] == "images"
    assert rec["provider"] == provider
    assert rec["upstream_model"] == model
    assert rec["images"] == 2
    assert rec["status"] == "success"


@pytest.mark.parametrize("provider", IMAGE_PROVIDERS)
def test_images_url(hub, mocks, client, provider):
    mock = mocks[provider]
    url = f"https://images.example.com/{provider}/cat.png"
    model = mock.scenario(unique_model("img"), image_url=url)
    resp = client.images.generate(model=f"{provider}/{model}", prompt="a cat", n=1, response_format="url")
    assert len(resp.data) == 1
    assert resp.data[0].url == url


def test_bedrock_nova_canvas_images(hub, mocks, client):
    """Bedrock image generation (Nova Canvas via InvokeModel `TEXT_IMAGE`) through /v1/images/generations
    and the AIGNE /api/v2/image route, metered per image."""
    mock = mocks["bedrock"]
    img = base64.b64encode(b"\x89PNG nova canvas bytes").decode()
    model = mock.scenario("amazon.nova-canvas-v1:0", image_b64=img)
    raw = client.images.with_raw_response.generate(
        model=f"bedrock/{model}", prompt="a red cube", n=2, size="1024x1024", quality="hd",
        response_format="b64_json",
    )
    resp = raw.parse()
    assert [d.b64_json for d in resp.data] == [img, img]
    up = mock.requests()[-1]
    assert up["path"] == "/model/amazon.nova-canvas-v1%3A0/invoke", up["path"]
    assert up["body"] == {
        "taskType": "TEXT_IMAGE",
        "textToImageParams": {"text": "a red cube"},
        "imageGenerationConfig": {"numberOfImages": 2, "width": 1024, "height": 1024, "quality": "premium"},
    }
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert (rec["endpoint"], rec["provider"], rec["images"], rec["status"]) == ("images", "bedrock", 2, "success")

    r = httpx.post(
        f"{hub.url}/api/v2/image",
        headers={"Authorization": f"Bearer {hub.admin_key}"},
        json={"input": {"prompt": "a blue cube", "modelOptions": {"model": f"bedrock/{model}"}},
              "agent": "$CHAT_MODEL", "options": {"streaming": False}},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert [i["data"] for i in r.json()["images"]] == [img]
    assert mock.requests()[-1]["body"]["textToImageParams"]["text"] == "a blue cube"


def test_images_unsupported_provider_is_4xx(hub, mocks, client):
    import openai

    model = unique_model("img")
    with pytest.raises(openai.APIStatusError) as ei:
        client.images.generate(model=f"deepseek/{model}", prompt="x")
    assert 400 <= ei.value.status_code < 500
    assert mocks.deepseek.requests_for(model) == []


# ------------------------------------------------------------------ models


def test_models_lists_provider_prefixed_ids(hub, mocks, client):
    page = client.models.list()
    ids = [m.id for m in page.data]
    assert ids, "empty model list"
    assert len(ids) == len(set(ids)), "duplicate model ids"
    for m in page.data:
        assert m.object == "model"
        prov = m.id.split("/", 1)[0]
        # the native providers (anthropic, google, bedrock) are configured too
        assert "/" in m.id and prov in PROVIDERS + ["anthropic", "google", "bedrock"], (
            f"model id {m.id!r} is not provider/model"
        )

    # every configured provider is represented (Doubao's may come from a configured catalogue)
    for prov in PROVIDERS:
        if prov != "doubao":
            assert any(i.startswith(prov + "/") for i in ids), f"no {prov}/... model in /v1/models"

    # when the hub does ask an upstream for its listing, what the upstream lists must show, prefixed
    def listing_calls(prov):
        return [r for r in mocks[prov].requests() if r["method"] == "GET" and r["path"].rstrip("/").endswith("/models")]

    asked = {prov: bool(listing_calls(prov)) for prov in PROVIDERS if prov != "doubao"}
    for prov, was_asked in asked.items():
        if not was_asked:
            continue
        r = httpx.get(f"{mocks[prov].base_url}/models", headers={"Authorization": f"Bearer {MOCK_API_KEY}"})
        assert r.status_code == 200, f"{prov} mock /models: {r.status_code}"
        for uid in [d["id"] for d in r.json()["data"]]:
            assert f"{prov}/{uid}" in ids, f"{prov} upstream lists {uid} but /v1/models lacks {prov}/{uid}"

    # Doubao has no model listing: the hub must never call it
    dreqs = [r for r in mocks.doubao.requests() if r["method"] == "GET" and r["path"].rstrip("/").endswith("/models")]
    assert dreqs == [], "hub called Doubao's (non-existent) /models"


def test_models_call_is_metered(hub, client):
    """Every authenticated call leaves one usage record, listing models included."""
    raw = client.models.with_raw_response.list()
    rec = hub.require_usage(raw.headers.get("x-request-id"))
    assert rec["endpoint"] == "models"
    assert rec["status"] == "success"
    assert rec["http_status"] == 200


def test_models_is_openai_list_shape(hub):
    r = hub.http.get("/v1/models", headers=hub.auth())
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    assert isinstance(body["data"], list)
    for m in body["data"]:
        assert set(("id", "object", "created", "owned_by")) <= set(m), m
