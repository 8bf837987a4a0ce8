// Shared fixtures: one `hub-mock --all` per test file, a hub on a fresh data dir pointed at it.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';

import { Hub } from '../dist/index.js';

export const REPO = resolve(fileURLToPath(import.meta.url), '../../../..');
export const MOCK_KEY = 'sk-test';
export const ADMIN_KEY = `sk-node-admin-${randomUUID()}`;

const bin = (env, name) => process.env[env] || join(REPO, 'target', 'debug', name);

/** Starts `hub-mock --all`; resolves `{flavors: {openai: {origin, base_url}, ...}, stop()}`. */
export async function startMock(extraArgs = []) {
  const child = spawn(bin('HUB_MOCK_BIN', 'hub-mock'), ['--all', '--api-key', MOCK_KEY, ...extraArgs], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const line = await new Promise((ok, fail) => {
    const rl = createInterface({ input: child.stdout });
    const timer = setTimeout(() => fail(new Error('hub-mock did not start in 30 s')), 30_000);
    rl.once('line', (l) => {
      clearTimeout(timer);
      rl.close();
      ok(l);
    });
    child.once('exit', (code) => fail(new Error(`hub-mock exited with ${code}`)));
  });
  const flavors = JSON.parse(line);
  return {
    flavors,
    child,
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((ok) => child.once('exit', ok));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

/** Mock control API helpers for one flavor. */
export function control(origin) {
  return {
    async scenario(model, script = {}) {
      const r = await fetch(`${origin}/__mock/scenarios`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ model, script }),
      });
      if (!r.ok) throw new Error(`scenario rejected: ${r.status} ${await r.text()}`);
      return model;
    },
    async stats() {
      return (await fetch(`${origin}/__mock/stats`)).json();
    },
    async reset() {
      await fetch(`${origin}/__mock/reset`, { method: 'POST' });
    },
  };
}

export const uniqueModel = (prefix = 't') => `${prefix}-${randomUUID().slice(0, 16)}`;

/** Opens a hub on a fresh data dir with OpenAI (and DeepSeek) pointed at the mock. */
export async function openHub(mock, extra = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'hub-node-test-'));
  const hub = await Hub.open({
    dataDir,
    adminKey: ADMIN_KEY,
    env: {
      OPENAI_API_KEY: MOCK_KEY,
      OPENAI_BASE_URL: mock.flavors.openai.base_url,
      DEEPSEEK_API_KEY: MOCK_KEY,
      DEEPSEEK_BASE_URL: mock.flavors.deepseek.base_url,
    },
    ...extra,
  });
  return {
    hub,
    dataDir,
    async close() {
      await hub.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `f` until it returns a truthy value or `ms` pass. */
export async function eventually(f, ms = 5000, step = 20) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) return v;
    await sleep(step);
  }
}
