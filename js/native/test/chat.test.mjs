// Chat, embeddings, images, models, admin and error codes through the native module.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';

import { HubError } from '../dist/index.js';
import { ADMIN_KEY, control, openHub, startMock, uniqueModel } from './helpers.mjs';

let mock;
let h;
let openai;
const auth = { apiKey: ADMIN_KEY };

before(async () => {
  mock = await startMock();
  h = await openHub(mock);
  openai = control(mock.flavors.openai.origin);
});

after(async () => {
  await h?.close();
  await mock?.stop();
});

const user = (text) => ({ role: 'user', content: text });
const user_ = user;

async function usageOf(id) {
  const rows = await h.hub.admin.listUsage(1000);
  return rows.find((r) => r.id === id);
}

describe('chat', () => {
  test('returns the canonical response and commits its usage record first', async () => {
    const model = await openai.scenario(uniqueModel(), {
      text: 'Hello from the mock',
      usage: { prompt_tokens: 11, completion_tokens: 4 },
    });
    const resp = await h.hub.chat({ model: `openai/${model}`, messages: [user('hi')] }, auth);
    assert.equal(resp.output.content, 'Hello from the mock');
    assert.equal(resp.finish_reason, 'stop');
    assert.equal(resp.usage.prompt_tokens, 11);
    assert.equal(resp.usage.completion_tokens, 4);
    // Committed before the promise resolved: visible right away.
    const rows = await h.hub.admin.listUsage(1000);
    const rec = rows.find((r) => r.requested_model === `openai/${model}`);
    assert.ok(rec, 'usage record present');
    assert.equal(rec.ingress, 'native');
    assert.equal(rec.status, 'success');
    assert.equal(rec.prompt_tokens, 11);
    assert.equal(rec.provider, 'openai');
  });

  test('accepts canonical content parts, and records app and request id', async () => {
    const model = await openai.scenario(uniqueModel(), { text: 'parts ok' });
    const resp = await h.hub.chat(
      {
        model: `openai/${model}`,
        messages: [
          { role: 'system', content: [{ type: 'text', text: 'be brief' }] },
          { role: 'user', content: [{ type: 'text', text: 'hi' }] },
        ],
        max_tokens: 5,
        temperature: 0.2,
      },
      { ...auth, app: 'my-app', requestId: 'req-123' },
    );
    assert.equal(resp.output.content, 'parts ok');
    const reqs = await (await fetch(`${mock.flavors.openai.origin}/__mock/requests`)).json();
    const sent = reqs.map((r) => r.body).find((b) => b && b.model === model);
    assert.ok(JSON.stringify(sent).includes('be brief'));
    const rows = await h.hub.admin.listUsage(1000);
    const rec = rows.find((r) => r.requested_model === `openai/${model}`);
    assert.equal(rec.app, 'my-app');
    assert.equal(rec.client_request_id, 'req-123');
  });

  test('a trusted principal is recorded as given', async () => {
    const model = await openai.scenario(uniqueModel(), { text: 'ok' });
    await h.hub.chat(
      { model: `openai/${model}`, messages: [user('hi')] },
      { principal: { userId: 'did:abt:alice', teamId: 'team-1' } },
    );
    const rows = await h.hub.admin.listUsage(1000);
    const rec = rows.find((r) => r.requested_model === `openai/${model}`);
    assert.equal(rec.user_id, 'did:abt:alice');
    assert.equal(rec.team_id, 'team-1');
    assert.equal(rec.principal, 'external:did:abt:alice');
  });

  test('embeddings and images', async () => {
    const emb = await h.hub.embeddings(
      { model: 'openai/text-embedding-3-small', input: ['a', 'b'], dimensions: 4 },
      auth,
    );
    assert.equal(emb.data.length, 2);
    assert.equal(emb.data[0].embedding.length, 4);
    const img = await h.hub.images({ model: 'openai/gpt-image-1', prompt: 'a cat' }, auth);
    assert.equal(img.data.length, 1);
    assert.ok(img.data[0].b64_json || img.data[0].url);
  });

  test('models lists configured providers only', () => {
    const models = h.hub.models('chat');
    assert.ok(models.length > 0);
    assert.ok(models.every((m) => m.model_type === 'chat'));
    assert.ok(models.every((m) => ['openai', 'deepseek'].includes(m.provider)));
    assert.deepEqual([...h.hub.configuredProviders()].sort(), ['deepseek', 'openai']);
  });
});

describe('errors are HubErrors with a stable code and the HTTP status', () => {
  async function rejects(p, code, status) {
    await assert.rejects(p, (e) => {
      assert.ok(e instanceof HubError, `expected a HubError, got ${e}`);
      assert.ok(e instanceof Error);
      assert.equal(e.code, code, e.message);
      assert.equal(e.status, status);
      return true;
    });
  }
  const req = (model) => ({ model, messages: [user('hi')] });

  test('UNAUTHENTICATED', async () => {
    await rejects(h.hub.chat(req('openai/gpt-4o-mini'), {}), 'UNAUTHENTICATED', 401);
    await rejects(h.hub.chat(req('openai/gpt-4o-mini'), { apiKey: 'ahk_wrong' }), 'UNAUTHENTICATED', 401);
  });

  test('INVALID_REQUEST for a malformed request and for a bad option', async () => {
    await rejects(h.hub.chat({ model: 'openai/x' }, auth), 'INVALID_REQUEST', 400);
    await rejects(
      h.hub.chat(req('openai/x'), { principal: { userId: 'u', role: 'king' } }),
      'INVALID_REQUEST',
      400,
    );
    await rejects(
      h.hub.chat(req('openai/x'), { apiKey: ADMIN_KEY, principal: { userId: 'u' } }),
      'INVALID_REQUEST',
      400,
    );
  });

  test('MODEL_NOT_FOUND', async () => {
    await rejects(h.hub.chat(req('no-such-family-model'), auth), 'MODEL_NOT_FOUND', 404);
  });

  test('RATE_LIMITED from an upstream 429, with the provider named', async () => {
    const model = await openai.scenario(uniqueModel(), { error: { status: 429, retry_after: 3 } });
    await assert.rejects(h.hub.chat(req(`openai/${model}`), auth), (e) => {
      assert.equal(e.code, 'RATE_LIMITED');
      assert.equal(e.status, 429);
      assert.equal(e.provider, 'openai');
      assert.equal(e.retryAfterMs, 3000);
      return true;
    });
  });

  test('UPSTREAM_UNAVAILABLE, UPSTREAM_ERROR and INVALID_REQUEST from upstream statuses', async () => {
    const m503 = await openai.scenario(uniqueModel(), { error: { status: 503 } });
    await rejects(h.hub.chat(req(`openai/${m503}`), auth), 'UPSTREAM_UNAVAILABLE', 503);
    const m500 = await openai.scenario(uniqueModel(), { error: { status: 500 } });
    await rejects(h.hub.chat(req(`openai/${m500}`), auth), 'UPSTREAM_ERROR', 502);
    const m400 = await openai.scenario(uniqueModel(), { error: { status: 400 } });
    await rejects(h.hub.chat(req(`openai/${m400}`), auth), 'INVALID_REQUEST', 400);
  });

  test('a stream that fails before its first event rejects on the first next()', async () => {
    const model = await openai.scenario(uniqueModel(), { error: { status: 429 } });
    const it = h.hub.chatStream(req(`openai/${model}`), auth);
    await rejects(it.next(), 'RATE_LIMITED', 429);
  });

  test('a stream that fails midway yields what came, then rejects', async () => {
    const model = await openai.scenario(uniqueModel(), {
      text: 'one two three four five',
      chunks: 5,
      error_after_chunks: 2,
    });
    const got = [];
    await assert.rejects(
      (async () => {
        for await (const c of h.hub.chatStream(req(`openai/${model}`), auth)) got.push(c);
      })(),
      (e) => e instanceof HubError && e.status >= 400,
    );
    assert.ok(got.some((c) => c.type === 'text_delta'));
  });

  test('failed calls are recorded too', async () => {
    const model = await openai.scenario(uniqueModel(), { error: { status: 400 } });
    await assert.rejects(h.hub.chat(req(`openai/${model}`), auth));
    const rows = await h.hub.admin.listUsage(1000);
    const rec = rows.find((r) => r.requested_model === `openai/${model}`);
    assert.equal(rec.status, 'failed');
    assert.equal(rec.http_status, 400);
  });
});

describe('admin operations', () => {
  test('providers and credentials: add, list (masked), remove', async () => {
    const p = await h.hub.admin.addProvider({ name: 'xai', baseUrl: mock.flavors.xai.base_url });
    assert.equal(p.kind, 'xai');
    const secret = 'xai-secret-value-123456';
    const c = await h.hub.admin.addCredential({ provider: 'xai', value: secret, weight: 5 });
    assert.match(c.id, /^cred_/);
    assert.ok(!JSON.stringify(c).includes(secret));
    assert.equal(c.masked.slice(0, 4), 'xai-');
    const creds = await h.hub.admin.listCredentials();
    assert.ok(creds.some((x) => x.id === c.id));
    assert.ok(!JSON.stringify(creds).includes(secret));
    assert.ok(!JSON.stringify(creds).includes('ciphertext'));
    // Live at once in this hub.
    assert.ok(h.hub.configuredProviders().includes('xai'));
    await h.hub.admin.removeCredential(c.id);
    await h.hub.admin.removeProvider('xai');
    assert.ok(!(await h.hub.admin.listProviders()).some((x) => x.kind === 'xai'));
    assert.ok(!h.hub.configuredProviders().includes('xai'));
  });

  test('bad admin input is INVALID_REQUEST', async () => {
    await assert.rejects(h.hub.admin.addProvider({ name: 'nope' }), { code: 'INVALID_REQUEST', status: 400 });
    await assert.rejects(h.hub.admin.addProvider({ name: 'xai', baseUrl: 'ftp://x' }), {
      code: 'INVALID_REQUEST',
    });
    await assert.rejects(h.hub.admin.addCredential({ provider: 'openai', value: ' ' }), {
      code: 'INVALID_REQUEST',
    });
  });
});

test('users, keys and policies: created keys work in-process, policy and revocation apply, audited', async () => {
  const admin = h.hub.admin;
  const team = await admin.createTeam(`team-${uniqueModel()}`);
  const user = await admin.createUser({ name: 'dana', role: 'member', team: team.id });
  const created = await admin.createKey({ user_id: user.id, name: 'dana key' });
  assert.match(created.key, /^ahk_/);
  const model = await openai.scenario(uniqueModel(), { text: 'hello dana' });
  const r = await h.hub.chat({ model: `openai/${model}`, messages: [user_('hi')] }, { apiKey: created.key });
  assert.equal(r.output.content, 'hello dana');
  // A policy that allows only other models refuses this one on the native surface too.
  await admin.setKeyPolicy(created.id, { models: ['deepseek/*'] });
  await assert.rejects(
    h.hub.chat({ model: `openai/${model}`, messages: [user_('hi')] }, { apiKey: created.key }),
    { code: 'PERMISSION_DENIED', status: 403 },
  );
  await admin.revokeKey(created.id);
  await assert.rejects(
    h.hub.chat({ model: `openai/${model}`, messages: [user_('hi')] }, { apiKey: created.key }),
    { code: 'UNAUTHENTICATED', status: 401 },
  );
  const audit = await admin.listAudit({ limit: 100 });
  for (const action of ['team.create', 'user.create', 'key.create', 'key.revoke']) {
    assert.ok(audit.some((e) => e.action === action && e.actor_user_id === 'native'), action);
  }
  // Acting as a member: their own scope only.
  const asMember = h.hub.adminAs({ userId: user.id, role: 'member', teamId: team.id });
  await assert.rejects(asMember.listProviders(), { code: 'PERMISSION_DENIED', status: 403 });
  const own = await asMember.listKeys();
  assert.ok(own.every((k) => k.user_id === user.id));
});

test('a closed hub refuses calls with HUB_CLOSED', async () => {
  const other = await openHub(mock);
  await other.close();
  await assert.rejects(other.hub.chat({ model: 'openai/x', messages: [user('hi')] }, auth), {
    code: 'HUB_CLOSED',
    status: 503,
  });
});
