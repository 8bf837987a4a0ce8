// AIGNE Hub in-process: the public API over the native module (crates/hub-node).
//
// Requests and responses are hub-core's canonical types (snake_case, as `types.rs` defines them);
// they cross the native boundary as JSON text. Errors are `HubError`s with a stable `code` and the
// HTTP `status` the same failure has on the HTTP API.

import { createRequire } from 'node:module';

import type * as Native from '../native.cjs';
import type {
  ChatRequest,
  ChatResponse,
  EmbeddingsRequest,
  EmbeddingsResponse,
  ImagesRequest,
  ImagesResponse,
  ModelInfo,
  StreamChunk,
  UsageRecord,
} from './types.js';

export type * from './types.js';

const require = createRequire(import.meta.url);
const native = require('../native.cjs') as typeof Native;

/** Stable error codes (`HubError.code`). */
export type HubErrorCode =
  | 'INVALID_REQUEST'
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'MODEL_NOT_FOUND'
  | 'NOT_FOUND'
  | 'PAYLOAD_TOO_LARGE'
  | 'RATE_LIMITED'
  | 'INSUFFICIENT_CREDITS'
  | 'BUDGET_EXCEEDED'
  | 'UPSTREAM_ERROR'
  | 'UPSTREAM_UNAVAILABLE'
  | 'UPSTREAM_TIMEOUT'
  | 'INTERNAL'
  | 'HUB_CLOSED';

/** A failure, as the hub reports it. */
export class HubError extends Error {
  /** Stable code. */
  readonly code: HubErrorCode;
  /** The HTTP status the HTTP API answers for this failure. */
  readonly status: number;
  /** Finer class (`rate_limited`, `upstream_auth`, `client_closed`, ...). */
  readonly type: string;
  /** The offending parameter, for invalid requests. */
  readonly param: string | null;
  /** The upstream's or the hub's machine code (`model_not_found`, `insufficient_quota`, ...). */
  readonly upstreamCode: string | null;
  /** The provider involved, for upstream failures. */
  readonly provider: string | null;
  /** Delay the provider asked for, in ms. */
  readonly retryAfterMs: number | null;

  constructor(body: {
    code: HubErrorCode;
    status: number;
    message: string;
    type?: string;
    param?: string | null;
    upstreamCode?: string | null;
    provider?: string | null;
    retryAfterMs?: number | null;
  }) {
    super(body.message);
    this.name = 'HubError';
    this.code = body.code;
    this.status = body.status;
    this.type = body.type ?? body.code.toLowerCase();
    this.param = body.param ?? null;
    this.upstreamCode = body.upstreamCode ?? null;
    this.provider = body.provider ?? null;
    this.retryAfterMs = body.retryAfterMs ?? null;
  }
}

const PREFIX = 'HUB_ERROR:';

/** Turns a native rejection into a `HubError` (other errors pass through). */
function translate(err: unknown): unknown {
  if (err instanceof Error && err.message.startsWith(PREFIX)) {
    try {
      const e = new HubError(JSON.parse(err.message.slice(PREFIX.length)));
      return e;
    } catch {
      return err;
    }
  }
  return err;
}

async function call<T>(f: () => Promise<string>): Promise<T> {
  try {
    return JSON.parse(await f()) as T;
  } catch (err) {
    throw translate(err);
  }
}

function callSync<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    throw translate(err);
  }
}

/** A principal the host authenticated itself (trusted: the caller is in-process code). */
export interface Principal {
  userId: string;
  /** `owner`, `admin`, `member` (default), `guest`. */
  role?: 'owner' | 'admin' | 'member' | 'guest';
  teamId?: string;
  /** Recorded as the usage record's principal (default `external:<userId>`). */
  keyId?: string;
}

/** Who is calling: an API key, or a principal. */
export interface CallOptions {
  apiKey?: string;
  principal?: Principal;
  /** The calling app (recorded with usage). */
  app?: string;
  /** The caller's own request id (recorded with usage). */
  requestId?: string;
  /** Cancels the call (streams: closes the upstream request and records what was delivered). */
  signal?: AbortSignal;
}

export interface OpenOptions {
  /** Data directory: SQLite database and, unless given otherwise, the master key file. */
  dataDir: string;
  /** The master key (64 hex characters or base64 of 32 bytes). */
  masterKey?: string;
  /** A file holding the master key (created 0600 if absent). */
  masterKeyFile?: string;
  /** This value becomes a valid owner API key. */
  adminKey?: string;
  /**
   * Provider variables, read the way `aigne-hub serve` reads its environment: `OPENAI_API_KEY`,
   * `OPENAI_BASE_URL`, `OPEN_ROUTER_API_KEY`, ... (comma lists rotate). Pass `process.env` to
   * use the process environment.
   */
  env?: Record<string, string | undefined>;
  publicUrl?: string;
  /**
   * Asked about API keys the hub does not know: resolve to a principal, or null/undefined when
   * the token is not valid. Answers are cached (`identityTtlMs`, `identityNegativeTtlMs`), so a
   * known token never reaches this function on the hot path. A throw fails the call with
   * `UPSTREAM_UNAVAILABLE` (503) and is not cached.
   */
  resolveIdentity?: (token: string) => Promise<Principal | null | undefined> | Principal | null | undefined;
  /** Told of each batch of usage records after it is committed (billing sync). */
  onUsage?: (batch: UsageRecord[]) => void;
  identityTtlMs?: number;
  identityNegativeTtlMs?: number;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  reloadIntervalMs?: number;
}

/** Provider as stored. */
export interface ProviderRow {
  kind: string;
  base_url: string | null;
  region: string | null;
  enabled: boolean;
  created_at_ms: number;
}

/** Credential as listed: masked, never the secret. */
export interface CredentialRow {
  id: string;
  provider: string;
  name: string;
  masked: string;
  weight: number;
  enabled: boolean;
  created_at_ms: number;
}

/** Row types of the admin API (see `crates/hub-core/src/iam.rs`): teams, users, keys, audit. */
export type AdminRow = Record<string, unknown>;

/**
 * The admin operations of `aigne-hub admin` and the admin HTTP API (`hub_core::iam`): the same
 * validation, scopes and audit entries. Field names are the admin API's (snake_case). By default
 * they act as the owner (as the CLI does); `hub.adminAs(principal)` acts as someone else, with
 * their scope.
 */
export class Admin {
  readonly #hub: Native.NativeHub;
  readonly #actor: Principal | undefined;

  constructor(hub: Native.NativeHub, actor?: Principal) {
    this.#hub = hub;
    this.#actor = actor;
  }

  /** Runs any admin operation by name (`team.create`, `key.policy`, `audit.list`, ...). */
  run<T = unknown>(op: string, args: object = {}): Promise<T> {
    return call<T>(() => this.#hub.admin(op, JSON.stringify(args), this.#actor));
  }

  createTeam(name: string): Promise<AdminRow> {
    return this.run('team.create', { name });
  }

  listTeams(): Promise<AdminRow[]> {
    return this.run('team.list');
  }

  createUser(args: { name: string; role: 'owner' | 'admin' | 'member' | 'guest'; team?: string }): Promise<AdminRow> {
    return this.run('user.create', args);
  }

  listUsers(): Promise<AdminRow[]> {
    return this.run('user.list');
  }

  updateUser(id: string, changes: { name?: string; role?: string; team?: string }): Promise<AdminRow> {
    return this.run('user.update', { id, ...changes });
  }

  /** A new API key; `key` in the result is shown this once. */
  createKey(args: {
    user_id: string;
    name?: string;
    team?: string;
    expires_at_ms?: number;
    policy?: Record<string, unknown>;
  }): Promise<AdminRow & { key: string }> {
    return this.run('key.create', args);
  }

  listKeys(): Promise<AdminRow[]> {
    return this.run('key.list');
  }

  revokeKey(id: string): Promise<AdminRow> {
    return this.run('key.revoke', { id });
  }

  setKeyPolicy(id: string, policy: Record<string, unknown>): Promise<AdminRow> {
    return this.run('key.policy', { id, policy });
  }

  addProvider(args: { name: string; baseUrl?: string; region?: string; disabled?: boolean }): Promise<ProviderRow> {
    return this.run('provider.add', {
      name: args.name,
      base_url: args.baseUrl,
      region: args.region,
      enabled: !args.disabled,
    });
  }

  listProviders(): Promise<ProviderRow[]> {
    return this.run('provider.list');
  }

  removeProvider(name: string): Promise<{ removed: string }> {
    return this.run('provider.remove', { name });
  }

  /** Stores a provider credential, encrypted; returns it masked. */
  addCredential(args: {
    provider: string;
    value: string;
    secret?: string;
    name?: string;
    weight?: number;
    enabled?: boolean;
  }): Promise<CredentialRow> {
    return this.run('credential.add', args);
  }

  updateCredential(
    id: string,
    changes: { name?: string; weight?: number; enabled?: boolean; value?: string; secret?: string },
  ): Promise<CredentialRow> {
    return this.run('credential.update', { id, ...changes });
  }

  listCredentials(): Promise<CredentialRow[]> {
    return this.run('credential.list');
  }

  removeCredential(id: string): Promise<{ removed: string }> {
    return this.run('credential.remove', { id });
  }

  /** Newest usage records the actor may see (at most 1000). */
  listUsage(limit = 50): Promise<UsageRecord[]> {
    return this.run('usage.list', { limit });
  }

  /** Newest audit entries. */
  listAudit(q: { limit?: number; action?: string; actor_user_id?: string; since_ms?: number } = {}): Promise<AdminRow[]> {
    return this.run('audit.list', q);
  }
}

/** An HTTP server started by `hub.serve()`. */
export interface Server {
  readonly port: number;
  /** `http://host:port`. */
  readonly url: string;
  /** Stops accepting connections and waits for in-flight requests. The hub stays open. */
  close(): Promise<void>;
}

type MessageInput = Omit<ChatRequest['messages'][number], 'content' | 'content_is_text'> & {
  content?: string | ChatRequest['messages'][number]['content'];
  content_is_text?: boolean;
};

/** A chat request; `content` may be a plain string. `stream` is set by the method called. */
export type ChatInput = Omit<ChatRequest, 'messages' | 'stream'> & {
  messages: MessageInput[];
  stream?: boolean;
};

function chatJson(req: ChatInput, stream: boolean): string {
  // Anything malformed is passed through for the native side to reject as INVALID_REQUEST.
  const messages = Array.isArray(req?.messages)
    ? req.messages.map((m) =>
        typeof m?.content === 'string'
          ? { ...m, content: [{ type: 'text', text: m.content }], content_is_text: true }
          : m,
      )
    : req?.messages;
  return JSON.stringify({ ...req, messages, stream });
}

function nativeAuth(opts: CallOptions | undefined): Native.CallAuth {
  return {
    apiKey: opts?.apiKey,
    principal: opts?.principal,
    app: opts?.app,
    requestId: opts?.requestId,
  };
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

export class Hub {
  readonly #native: Native.NativeHub;
  readonly #servers = new Set<Server>();
  /** The admin operations of the CLI. */
  readonly admin: Admin;

  private constructor(n: Native.NativeHub) {
    this.#native = n;
    this.admin = new Admin(n);
  }

  /** Opens the hub on a data dir (creating it, its database and master key when absent). */
  static async open(options: OpenOptions): Promise<Hub> {
    const { resolveIdentity, onUsage, env, ...rest } = options;
    const cleanEnv: Record<string, string> = {};
    for (const [k, v] of Object.entries(env ?? {})) {
      if (typeof v === 'string') cleanEnv[k] = v;
    }
    const resolver = resolveIdentity
      ? async (token: string): Promise<string | null> => {
          const p = await resolveIdentity(token);
          return p ? JSON.stringify(p) : null;
        }
      : undefined;
    const usage = onUsage
      ? (json: string): void => {
          // A throwing hook must not become an uncaught exception of the process.
          try {
            onUsage(JSON.parse(json) as UsageRecord[]);
          } catch (err) {
            queueMicrotask(() => {
              process.emitWarning(`onUsage threw: ${String(err)}`);
            });
          }
        }
      : undefined;
    try {
      const n = await native.NativeHub.open({ ...rest, env: cleanEnv }, resolver, usage);
      return new Hub(n);
    } catch (err) {
      throw translate(err);
    }
  }

  /** The owner API key generated when this open initialised the data dir, else null. */
  get newOwnerKey(): string | null {
    return this.#native.newOwnerKey ?? null;
  }

  /** Stops servers started by `serve()`, flushes usage and stops background work. */
  async close(): Promise<void> {
    await Promise.all([...this.#servers].map((s) => s.close()));
    await this.#native.close();
  }

  /** Non-streaming chat; resolves after the call's usage record is committed. */
  async chat(request: ChatInput, opts?: CallOptions): Promise<ChatResponse> {
    const signal = opts?.signal;
    if (signal?.aborted) throw abortError(signal);
    const p = call<ChatResponse>(() => this.#native.chat(chatJson(request, false), nativeAuth(opts)));
    if (!signal) return p;
    return new Promise<ChatResponse>((resolve, reject) => {
      const onAbort = (): void => reject(abortError(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /**
   * Streaming chat as an async iterable of canonical stream events, ending with
   * `{type: 'done', usage}` once the usage record is committed. Pull-based: the upstream is read
   * only as fast as chunks are consumed. `break` (or `return()`) or aborting `opts.signal` closes
   * the upstream request; the call is recorded as cancelled with what was delivered.
   */
  chatStream(request: ChatInput, opts?: CallOptions): AsyncGenerator<StreamChunk, void, undefined> {
    // Validated now (bad JSON throws here); authenticated and routed on the first `next()`.
    const handle = callSync(() => this.#native.chatStream(chatJson(request, true), nativeAuth(opts)));
    return iterate(handle, opts?.signal);
  }

  async embeddings(request: EmbeddingsRequest, opts?: CallOptions): Promise<EmbeddingsResponse> {
    return call(() => this.#native.embeddings(JSON.stringify(request), nativeAuth(opts)));
  }

  async images(request: ImagesRequest, opts?: CallOptions): Promise<ImagesResponse> {
    return call(() => this.#native.images(JSON.stringify(request), nativeAuth(opts)));
  }

  /** The admin operations, acting as `principal` (with their scope) instead of the owner. */
  adminAs(principal: Principal): Admin {
    return new Admin(this.#native, principal);
  }

  /** Models callers can use, as `provider/model`. */
  models(type?: 'chat' | 'embedding' | 'image'): ModelInfo[] {
    return JSON.parse(callSync(() => this.#native.models(type))) as ModelInfo[];
  }

  /** Providers configured and usable now. */
  configuredProviders(): string[] {
    return callSync(() => this.#native.configuredProviders());
  }

  /** Forgets every identity `resolveIdentity` answered (e.g. after revoking a token). */
  clearIdentityCache(): void {
    callSync(() => this.#native.clearIdentityCache());
  }

  /**
   * Serves the HTTP API of `aigne-hub serve` (OpenAI-compatible `/v1`, ...) from this process,
   * on this hub. Port 0 picks a free port.
   */
  async serve(opts: { host?: string; port?: number; maxBodyBytes?: number } = {}): Promise<Server> {
    const host = opts.host ?? '127.0.0.1';
    let n: Native.NativeServer;
    try {
      n = await this.#native.serve(host, opts.port ?? 8090, opts.maxBodyBytes);
    } catch (err) {
      throw translate(err);
    }
    const servers = this.#servers;
    const urlHost = host.includes(':') ? `[${host}]` : host;
    const server: Server = {
      port: n.port,
      url: `http://${urlHost}:${n.port}`,
      async close() {
        servers.delete(server);
        try {
          await n.close();
        } catch (err) {
          throw translate(err);
        }
      },
    };
    // Held here until closed: dropping the native handle would stop the server.
    servers.add(server);
    return server;
  }
}

async function* iterate(
  handle: Native.NativeStream,
  signal: AbortSignal | undefined,
): AsyncGenerator<StreamChunk, void, undefined> {
  let aborted = false;
  const onAbort = (): void => {
    aborted = true;
    handle.cancel();
  };
  if (signal) {
    if (signal.aborted) {
      handle.cancel();
      throw abortError(signal);
    }
    signal.addEventListener('abort', onAbort, { once: true });
  }
  try {
    for (;;) {
      let json: string | null;
      try {
        json = await handle.next();
      } catch (err) {
        throw translate(err);
      }
      if (json === null) {
        if (aborted && signal) throw abortError(signal);
        return;
      }
      yield JSON.parse(json) as StreamChunk;
    }
  } finally {
    signal?.removeEventListener('abort', onAbort);
    // Reached on `break`/`return()`/throw as well as at the end: a no-op once the stream is over.
    handle.cancel();
  }
}
