// hub.serve(): the HTTP server of `aigne-hub serve` inside this process, answering the openai SDK.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';

import { ADMIN_KEY, control, openHub, startMock, uniqueModel } from './helpers.mjs';

let mock;
let h;
let openai;

before(async () => {
  mock = await startMock();
  openai = control(mock.flavors.openai.origin);
  h = await openHub(mock, {
    async resolveIdentity(token) {
      return token === 'blocklet-http' ? { userId: 'did:abt:carol' } : null;
    },
  });
});

after(async () => {
  await h?.close();
  await mock?.stop();
});

test('serve() answers the openai SDK (chat, stream, models), and stops on close()', async () => {
  const server = await h.hub.serve({ host: '127.0.0.1', port: 0 });
  assert.ok(server.port > 0);
  const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: ADMIN_KEY, maxRetries: 0 });
  const model = await openai.scenario(uniqueModel(), {
    text: 'served in process',
    usage: { prompt_tokens: 5, completion_tokens: 3 },
  });
  const resp = await client.chat.completions.create({
    model: `openai/${model}`,
    messages: [{ role: 'user', content: 'hi' }],
  });
  assert.equal(resp.choices[0].message.content, 'served in process');
  assert.equal(resp.usage.prompt_tokens, 5);

  const stream = await client.chat.completions.create({
    model: `openai/${model}`,
    messages: [{ role: 'user', content: 'hi' }],
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? '';
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, 'served in process');
  assert.equal(usage.completion_tokens, 3);

  const models = await client.models.list();
  assert.ok(models.data.length > 0);

  // The same hub: HTTP calls are in this hub's usage, as ingress `openai`.
  const rows = await h.hub.admin.listUsage(100);
  assert.equal(rows.filter((r) => r.requested_model === `openai/${model}` && r.ingress === 'openai').length, 2);

  // Errors in the caller's format.
  await assert.rejects(
    new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'ahk_nope', maxRetries: 0 }).chat.completions.create({
      model: `openai/${model}`,
      messages: [{ role: 'user', content: 'hi' }],
    }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );

  await server.close();
  await assert.rejects(fetch(`${server.url}/v1/models`));
  // The hub stays open after its server stops.
  const r = await h.hub.chat({ model: `openai/${model}`, messages: [{ role: 'user', content: 'hi' }] }, { apiKey: ADMIN_KEY });
  assert.equal(r.output.content, 'served in process');
});

test('over HTTP, tokens only the host knows are resolved by resolveIdentity', async () => {
  const server = await h.hub.serve({ port: 0 });
  try {
    const model = await openai.scenario(uniqueModel(), { text: 'hello carol' });
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: 'blocklet-http', maxRetries: 0 });
    const resp = await client.chat.completions.create({
      model: `openai/${model}`,
      messages: [{ role: 'user', content: 'hi' }],
    });
    assert.equal(resp.choices[0].message.content, 'hello carol');
    const rec = (await h.hub.admin.listUsage(100)).find((r) => r.requested_model === `openai/${model}`);
    assert.equal(rec.user_id, 'did:abt:carol');
  } finally {
    await server.close();
  }
});

test('serve() on a port in use fails with a clear error', async () => {
  const a = await h.hub.serve({ port: 0 });
  try {
    await assert.rejects(h.hub.serve({ port: a.port }), (e) => e.code === 'INTERNAL' && /cannot listen/.test(e.message));
    await assert.rejects(h.hub.serve({ host: 'localhost:x', port: 0 }), { code: 'INVALID_REQUEST' });
  } finally {
    await a.close();
  }
});

test('hub.close() stops servers it started', async () => {
  const other = await openHub(mock);
  const s = await other.hub.serve({ port: 0 });
  assert.equal((await fetch(`${s.url}/v1/models`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).status, 200);
  await other.close();
  await assert.rejects(fetch(`${s.url}/v1/models`));
});
