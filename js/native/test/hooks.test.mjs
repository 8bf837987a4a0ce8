// Hooks into JS: resolveIdentity (cached with a TTL) and onUsage (after each committed batch).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { ADMIN_KEY, control, eventually, openHub, sleep, startMock, uniqueModel } from './helpers.mjs';

let mock;
let h;
let openai;
const calls = [];
const batches = [];
const user = (text) => ({ role: 'user', content: text });

before(async () => {
  mock = await startMock();
  openai = control(mock.flavors.openai.origin);
  h = await openHub(mock, {
    identityTtlMs: 400,
    identityNegativeTtlMs: 400,
    async resolveIdentity(token) {
      calls.push(token);
      if (token === 'blocklet-good') return { userId: 'did:abt:bob', role: 'member', teamId: 't-9' };
      if (token === 'blocklet-throws') throw new Error('blocklet service down');
      return null;
    },
    onUsage(batch) {
      batches.push(batch);
    },
  });
});

after(async () => {
  await h?.close();
  await mock?.stop();
});

const count = (token) => calls.filter((t) => t === token).length;

test('resolveIdentity answers unknown tokens, and is not asked again within the TTL', async () => {
  const model = await openai.scenario(uniqueModel(), { text: 'hi bob' });
  for (let i = 0; i < 5; i++) {
    const r = await h.hub.chat({ model: `openai/${model}`, messages: [user('hi')] }, { apiKey: 'blocklet-good' });
    assert.equal(r.output.content, 'hi bob');
  }
  assert.equal(count('blocklet-good'), 1, 'cached after the first call');
  const rows = await h.hub.admin.listUsage(100);
  const rec = rows.find((r) => r.requested_model === `openai/${model}`);
  assert.equal(rec.user_id, 'did:abt:bob');
  assert.equal(rec.team_id, 't-9');
  // After the TTL the resolver is asked again.
  await sleep(500);
  await h.hub.chat({ model: `openai/${model}`, messages: [user('hi')] }, { apiKey: 'blocklet-good' });
  assert.equal(count('blocklet-good'), 2);
});

test('a token the resolver rejects is UNAUTHENTICATED, and remembered as such', async () => {
  for (let i = 0; i < 3; i++) {
    await assert.rejects(
      h.hub.chat({ model: 'openai/x', messages: [user('hi')] }, { apiKey: 'blocklet-bad' }),
      { code: 'UNAUTHENTICATED', status: 401 },
    );
  }
  assert.equal(count('blocklet-bad'), 1);
});

test('a throwing resolver fails the call with UPSTREAM_UNAVAILABLE and is not cached', async () => {
  for (let i = 0; i < 2; i++) {
    await assert.rejects(
      h.hub.chat({ model: 'openai/x', messages: [user('hi')] }, { apiKey: 'blocklet-throws' }),
      (e) => e.code === 'UPSTREAM_UNAVAILABLE' && e.status === 503 && /blocklet service down/.test(e.message),
    );
  }
  assert.equal(count('blocklet-throws'), 2);
});

test("the hub's own keys never reach the resolver", async () => {
  const model = await openai.scenario(uniqueModel(), { text: 'ok' });
  const before = calls.length;
  await h.hub.chat({ model: `openai/${model}`, messages: [user('hi')] }, { apiKey: ADMIN_KEY });
  assert.equal(calls.length, before);
});

test('onUsage receives every committed record', async () => {
  const model = await openai.scenario(uniqueModel(), { text: 'metered' });
  const ids = new Set();
  for (let i = 0; i < 10; i++) {
    await h.hub.chat({ model: `openai/${model}`, messages: [user('hi')] }, { apiKey: ADMIN_KEY });
  }
  for await (const _ of h.hub.chatStream({ model: `openai/${model}`, messages: [user('hi')] }, { apiKey: ADMIN_KEY })) {
    // drain
  }
  const seen = await eventually(() => {
    const mine = batches.flat().filter((r) => r.requested_model === `openai/${model}`);
    return mine.length >= 11 ? mine : null;
  });
  assert.ok(seen, 'all 11 records reported');
  for (const r of seen) ids.add(r.id);
  assert.equal(ids.size, 11, 'each record once');
  assert.ok(seen.every((r) => r.status === 'success' && r.ingress === 'native'));
  assert.equal(seen.filter((r) => r.stream).length, 1);
  // Reported records are the committed ones.
  const stored = new Set((await h.hub.admin.listUsage(1000)).map((r) => r.id));
  assert.ok([...ids].every((id) => stored.has(id)));
});

test('a throwing onUsage does not break calls', async () => {
  const other = await openHub(mock, {
    onUsage() {
      throw new Error('billing sync failed');
    },
  });
  const warnings = [];
  const onWarning = (w) => warnings.push(w);
  process.on('warning', onWarning);
  try {
    const model = await openai.scenario(uniqueModel(), { text: 'still fine' });
    const r = await other.hub.chat({ model: `openai/${model}`, messages: [user('hi')] }, { apiKey: ADMIN_KEY });
    assert.equal(r.output.content, 'still fine');
    assert.ok(await eventually(() => warnings.some((w) => /billing sync failed/.test(w.message))));
  } finally {
    process.off('warning', onWarning);
    await other.close();
  }
});
