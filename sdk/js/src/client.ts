// FerryClient: the public API of sdk/API.md — accounts over the sealed short link, the
// long link (WebSocket, else long-poll) with reconnects, the sync model (every entry once,
// in order), sends retried with the same client_msg_id, groups, media.

import { create, toBinary, type DescMessage, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { hex, randomBytes, randomU64, unhex } from "./bytes.js";
import * as cmd from "./cmd.js";
import { asFerryError, FerryError } from "./errors.js";
import type { Frame } from "./frame.js";
import {
  AuthReqSchema, AuthRespSchema, EmptySchema, EndpointsReqSchema, EndpointsRespSchema, Transport as WireTransport, ErrorCode, FindUserReqSchema, FindUserRespSchema,
  FriendActionReqSchema, FriendActionRespSchema, FriendListReqSchema, FriendListRespSchema,
  FriendRequestReqSchema, GroupCreateReqSchema, GroupEvent_Kind, GroupListRespSchema,
  GroupMembersReqSchema, GroupNotifySchema, GroupReadsReqSchema, GroupReadsRespSchema,
  GroupReqSchema, GroupRespSchema, GroupSyncReqSchema, GroupSyncRespSchema, HeartbeatSchema,
  KickSchema, LogoutReqSchema, LogoutRespSchema, MediaChunkAckSchema, MediaChunkReqSchema,
  MediaCreateReqSchema, MediaCreateRespSchema, MediaFinishReqSchema, MediaFinishRespSchema,
  MediaKind, MediaRefSchema, MediaStatusReqSchema, NotifySchema, ReadReqSchema, RecallReqSchema,
  RegisterReqSchema, RegisterRespSchema, SendAckSchema, SendMsgSchema, SyncReqSchema,
  SyncRespSchema, TypingSchema, EditReqSchema, ReactReqSchema, ReactionsReqSchema,
  ReactionsRespSchema, HideReqSchema, PinReqSchema, PinsReqSchema, PinsRespSchema,
  SearchReqSchema, SearchRespSchema, ConvReqSchema, ConvRespSchema, ConvSetSchema, ConvStateSchema,
  type ConvRetention, type ConvState, type Edit, type Entry, type FindUserResp, type Friend, type FriendEvent, type Group,
  type GroupEntry, type GroupEvent, type GroupReadsResp, type Hide, type MediaCreateResp,
  type MediaRef, type Message, type Pin, type PinnedMessage, type Reaction, type ReactionsResp,
  type ReadReceipt, type Recall, type SearchResp, type SendAck, type SendMsg,
} from "./gen/ferry_pb.js";
import { Link, type LinkOpened } from "./link.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { ShortLink, decode } from "./short.js";
import { MemoryStore, IndexedDbStore, type StateStore } from "./store.js";
import type { Ticket } from "./secure.js";
import { LpCarrier, WsCarrier, type Carrier, type Transport, type WsCtor } from "./transport.js";
import { sealChunk } from "./upload.js";

export type { Transport } from "./transport.js";
export type ConnState = "offline" | "connecting" | "online";

export interface ClientOptions {
  /** Bootstrap endpoints, "IP:PORT" or "http://IP:PORT". In a browser, default: [location.host]. */
  servers?: string[];
  /** The server's static X25519 key, 64 hex. Absent: trust on first use (GET /v1/server-key),
   *  then pinned in the store. */
  serverKey?: string;
  /** Default: IndexedDbStore("ferry") in a browser, MemoryStore in node. */
  store?: StateStore;
  /** Transports tried per endpoint, in order. Default ["ws", "lp"]. */
  transports?: Transport[];
  /** WebSocket constructor (node < 22: pass `ws`'s). Default globalThis.WebSocket. */
  WebSocket?: unknown;
  /** Per-request timeout, ms. Default 10 000. */
  requestTimeoutMs?: number;
  /** After a WebSocket link was up, how long failed WebSocket attempts are taken for the
   *  server's trouble (a restart, an overload) rather than a network that blocks
   *  WebSocket: the client backs off and tries WebSocket again instead of falling back to
   *  long-poll (docs/protocol.md §7.4, step 3). Default 10 000 ms. */
  longPollAfterMs?: number;
  /** On long-poll: how often WebSocket is tried again in the background; when it logs
   *  in, the client moves onto it (§7.4, step 3). Default 120 000 ms. */
  wsRetryMs?: number;
}

export interface SendProgress {
  phase: "thumbnail" | "original";
  sent: number;
  total: number;
}

export interface Events {
  state: { state: ConnState; transport?: Transport; endpoint?: string; reason?: string };
  entry: Entry;
  message: { seq: bigint; message: Message };
  groupEntry: { groupId: bigint; entry: GroupEntry };
  groupMessage: { groupId: bigint; gseq: bigint; message: Message };
  recall: Recall;
  read: ReadReceipt;
  typing: { from: string };
  friend: FriendEvent;
  group: GroupEvent;
  /** A message's text was edited by its sender (1:1 from the inbox; a group's from its log,
   *  `groupId` set): replace the text, mark it edited at `editedMs`. */
  edit: Edit;
  /** A reaction was added (`add`) or taken back: set the message's count of `emoji` to
   *  `count` (0: gone). `groupId` set for a group message. */
  reaction: Reaction;
  /** This user deleted messages for themselves (from any of their devices): drop them, and
   *  keep the ids so a copy arriving later (a group's log) stays out. */
  hide: Hide;
  /** A message was pinned or unpinned: in the 1:1 chat with `peer`, or in group `groupId`. */
  pin: Pin;
  /** This user's state of a conversation changed (from any of their devices, or a
   *  retention the peer set): the conversation's whole state after the change (`peer` or
   *  `groupId`). Replace what is kept for that conversation with it; messages with an id at
   *  or below `clearedBeforeMsgId` are cleared for this user: drop them (also ones that
   *  arrive later through a sync). Applying it twice is harmless. */
  conv: ConvState;
  /** A group's owner or an admin set the group's retention (`retentionSecs`, 0: the
   *  server's only) — for every member: set it in the state of group `groupId`. */
  retention: ConvRetention;
  /** A place in group `groupId`'s log that carries nothing for this user: a message (or
   *  an edit, reaction or pin of one) from before they cleared the group's history, or a
   *  message the retention removed. Nothing to show; the log's cursor moves past it. */
  noContent: { groupId: bigint; gseq: bigint };
}

/** A conversation: the 1:1 chat with a user, or a group. */
export type Conversation = { user: string } | { groupId: bigint };

/** One change of `convSet`: the conversation (`peer` or `groupId`) and only the fields
 *  to change (`archived`, `unread`, `mutedUntilMs`, `draft`, `retentionSecs`; `clear`). */
export type ConvChange = MessageInitShape<typeof ConvSetSchema>;

/** What `search` takes: `SearchReq`'s fields, each optional (docs/protocol.md, Search). */
export type SearchQuery = MessageInitShape<typeof SearchReqSchema>;

type Listener<K extends keyof Events> = (e: Events[K]) => void;
type Emitted = { [K in keyof Events]: [K, Events[K]] }[keyof Events];

const CLIENT_VERSION = "ferry-js/0.1";
const HELD_MAX = 64;
const GAP_WAIT_MS = 25;
const UPLOAD_WINDOW = 8;
const DOWNLOAD_RANGE = 512 * 1024;
const BACKOFF_MIN_MS = 200;
const BACKOFF_MAX_MS = 30000;
const RACE_STAGGER_MS = 2500;
const RACE_MAX = 3;
const LONG_POLL_AFTER_MS = 10000;
const WS_RETRY_MS = 120000;
/** A KICK this long after an attempt was given up may be that attempt's own login. */
const SELF_KICK_WINDOW_MS = 30000;

/** Whether a failed attempt's LOGIN may still be applied by the server and replace the
 *  link this client makes next: it timed out, or a gateway answered `UNAVAILABLE` (it
 *  stopped waiting for logic, which may still have the LOGIN queued). */
function loginMayLand(fe: FerryError): boolean {
  return fe.kind === "timeout" || fe.is(ErrorCode.UNAVAILABLE);
}

/** One endpoint's connect attempt in a race: its carriers, to cut it short. */
class Dialing {
  cancelled = false;
  carriers: Carrier[] = [];
  cancel(): void {
    this.cancelled = true;
    for (const c of this.carriers) c.close();
  }
}

interface QueuedSend {
  msg: SendMsg;
  resolve: (a: SendAck) => void;
  reject: (e: FerryError) => void;
}

interface StoredTicket {
  ticket: string;
  secret: string;
  expiresMs: number;
}

/** The sync state of one logged-in link (docs/protocol.md §2, §4). */
class LinkSync {
  syncing = false;
  resync = false;
  held = new Map<bigint, Entry>();
  gapTimer: ReturnType<typeof setTimeout> | undefined;
  groupBusy = new Set<bigint>();
  groupAgain = new Set<bigint>();
  constructor(readonly link: Link) {}
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function isBrowser(): boolean {
  return typeof (globalThis as { document?: unknown }).document !== "undefined";
}

/** A send's options: `clientMsgId` (non-zero; default random) is the id the stored
 *  message carries back (`Message.clientMsgId`), so an app recognizes its own pending
 *  message in what sync brings, before or after the ack (docs/protocol.md §2). */
export interface SendOptions {
  clientMsgId?: bigint;
}

function clientMsgId(opts: SendOptions): bigint {
  if (opts.clientMsgId === undefined) return randomU64();
  if (opts.clientMsgId <= 0n || opts.clientMsgId >= 1n << 64n) throw new RangeError("clientMsgId must be a non-zero u64");
  return opts.clientMsgId;
}

function isU64(v: unknown): v is bigint {
  return typeof v === "bigint" && v >= 0n && v < 1n << 64n;
}

function invalid(message: string): FerryError {
  return new FerryError("invalid-argument", message);
}

/** A message id argument, or the caller's mistake (thrown as "invalid-argument"). */
function msgIdArg(id: bigint): bigint {
  if (!isU64(id) || id === 0n) throw invalid(`not a message id: ${String(id)}`);
  return id;
}

/** A conversation as PIN and PINS name it. */
function convArg(c: Conversation): { peer: string; groupId: bigint } {
  if (c && "user" in c && typeof c.user === "string" && c.user) return { peer: c.user, groupId: 0n };
  if (c && "groupId" in c && isU64(c.groupId) && c.groupId !== 0n) return { peer: "", groupId: c.groupId };
  throw invalid("a conversation is { user: name } or { groupId: id } (non-empty, non-zero)");
}

export class FerryClient {
  private store: StateStore;
  private servers: string[];
  private transports: Transport[];
  private WsCtor: WsCtor | undefined;
  private timeoutMs: number;
  private optKey: string | undefined;

  private _username: string | undefined;
  private token: string | undefined;
  private deviceId = "";
  private _synckey = 0n;
  private cursors = new Map<bigint, bigint>();
  private serverKey: Uint8Array | undefined;
  private ticket: Ticket | undefined;
  private lastEndpoint: string | undefined;
  /** The server's endpoint list (§7.2): its HTTP entries, best first, and its version. */
  private listed: string[] = [];
  private listVersion = 0n;
  /** When the endpoint list was last answered (ms; 0: not yet), and how often to ask. */
  private listAskedAt = 0;
  private listEveryMs = 600_000;

  private _state: ConnState = "offline";
  private _transport: Transport | undefined;
  private link: Link | undefined;
  private ls: LinkSync | undefined;
  private running = false;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  private connectWaiters: { resolve: () => void; reject: (e: FerryError) => void }[] = [];
  private linkWaiters: { resolve: (l: Link) => void; reject: (e: FerryError) => void }[] = [];
  private listeners = new Map<keyof Events, Set<(e: unknown) => void>>();
  private chain: Promise<void> = Promise.resolve();
  private sends: QueuedSend[] = [];
  private sending = false;
  /** Connect attempts under way (cut short by close()). */
  private dialings = new Set<Dialing>();
  /** When a connect attempt was last given up while its login may still land (a KICK of
   *  this device soon after is that login's, not another copy's). */
  private abandonedAt = 0;
  /** The endpoint that answered the last short-link request. */
  private shortGood: string | undefined;
  /** How far the server's clock is ahead of the device's, ms. */
  private clockOffsetMs = 0;
  /** When a WebSocket link that had logged in last ended (§7.4 step 3: failures right
   *  after it are the server's, not the network's). */
  private wsWorkedAt = 0;
  private readonly longPollAfterMs: number;
  private readonly wsRetryMs: number;
  /** A WebSocket link that logged in while on long-poll: the next link (no dial). */
  private switchTo: (LinkOpened & { endpoint: string }) | undefined;

  private constructor(opts: ClientOptions, store: StateStore) {
    this.store = store;
    const loc = (globalThis as { location?: { host?: string } }).location;
    this.servers = opts.servers?.length ? [...opts.servers] : loc?.host ? [loc.host] : [];
    this.transports = opts.transports?.length ? [...opts.transports] : ["ws", "lp"];
    this.WsCtor = (opts.WebSocket ?? (globalThis as { WebSocket?: unknown }).WebSocket) as WsCtor | undefined;
    this.timeoutMs = opts.requestTimeoutMs ?? 10000;
    this.longPollAfterMs = opts.longPollAfterMs ?? LONG_POLL_AFTER_MS;
    this.wsRetryMs = opts.wsRetryMs ?? WS_RETRY_MS;
    this.optKey = opts.serverKey;
  }

  /** Loads the store; no network yet. */
  static async create(opts: ClientOptions = {}): Promise<FerryClient> {
    const store = opts.store ?? (isBrowser() && (globalThis as { indexedDB?: unknown }).indexedDB ? new IndexedDbStore("ferry") : new MemoryStore());
    const c = new FerryClient(opts, store);
    await c.load();
    return c;
  }

  private async load(): Promise<void> {
    const s = this.store;
    this.deviceId = (await s.get<string>("deviceId")) ?? "";
    if (!this.deviceId) {
      this.deviceId = hex(randomBytes(16));
      await s.set("deviceId", this.deviceId);
    }
    this.token = await s.get<string>("token");
    this._username = await s.get<string>("username");
    this._synckey = BigInt((await s.get<string>("synckey")) ?? "0");
    const cur = (await s.get<Record<string, string>>("groupCursors")) ?? {};
    for (const [g, v] of Object.entries(cur)) this.cursors.set(BigInt(g), BigInt(v));
    if (this.optKey) {
      if (!/^[0-9a-fA-F]{64}$/.test(this.optKey.trim())) throw new FerryError("server-key", "serverKey: not 64 hex digits");
      this.serverKey = unhex(this.optKey.trim());
    } else {
      const k = await s.get<string>("serverKey");
      if (k) this.serverKey = unhex(k);
    }
    const t = await s.get<StoredTicket>("ticket");
    if (t) this.ticket = { ticket: unhex(t.ticket), secret: unhex(t.secret), expiresMs: t.expiresMs };
    this.lastEndpoint = await s.get<string>("lastEndpoint");
    const l = await s.get<{ version: string; endpoints: string[] }>("endpoints");
    if (l) {
      this.listVersion = BigInt(l.version);
      this.listed = l.endpoints;
    }
  }

  get username(): string | undefined {
    return this._username;
  }
  get signedIn(): boolean {
    return !!this.token;
  }
  get state(): ConnState {
    return this._state;
  }
  get transport(): Transport | undefined {
    return this._transport;
  }
  get synckey(): bigint {
    return this._synckey;
  }

  on<K extends keyof Events>(event: K, fn: (e: Events[K]) => void | Promise<unknown>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    const f = fn as (e: unknown) => void;
    set.add(f);
    return () => set!.delete(f);
  }

  /** Calls the event's listeners; returns the promises those that are async returned. */
  private emit<K extends keyof Events>(event: K, e: Events[K]): Promise<unknown>[] {
    const pending: Promise<unknown>[] = [];
    for (const fn of this.listeners.get(event) ?? []) {
      try {
        const r = fn(e) as unknown;
        if (r && typeof (r as Promise<unknown>).then === "function") {
          pending.push(
            (r as Promise<unknown>).catch((err) => console.error(`ferry: a "${event}" listener failed`, err)),
          );
        }
      } catch (err) {
        console.error(`ferry: a "${event}" listener threw`, err);
      }
    }
    return pending;
  }

  private setState(state: ConnState, extra: { transport?: Transport; endpoint?: string; reason?: string } = {}): void {
    this._state = state;
    this._transport = state === "online" ? extra.transport : undefined;
    this.emit("state", { state, ...extra });
  }

  // ------------------------------------------------------------------ endpoints, key

  private endpoints(): string[] {
    // The last that worked, the server's list, then the bootstrap addresses (§7.4).
    const all = [...(this.lastEndpoint ? [this.lastEndpoint] : []), ...this.listed, ...this.servers];
    const out = [...new Set(all)];
    if (!out.length) throw new FerryError("network", "no server endpoints: pass ClientOptions.servers");
    return out;
  }

  /** The endpoints for a short-link request: the one that answered the last, first (a
   *  silent endpoint costs a whole timeout; short-link requests are not raced, since
   *  most of them must not be applied twice). */
  private shortEndpoints(): string[] {
    const all = this.endpoints();
    return this.shortGood && all.includes(this.shortGood) ? [this.shortGood, ...all.filter((e) => e !== this.shortGood)] : all;
  }

  private async key(): Promise<Uint8Array> {
    if (this.serverKey) return this.serverKey;
    let last: FerryError | undefined;
    for (const ep of this.shortEndpoints()) {
      try {
        const k = await ShortLink.serverKey(ep, this.timeoutMs);
        this.serverKey = k;
        await this.store.set("serverKey", hex(k));
        return k;
      } catch (e) {
        last = asFerryError(e);
      }
    }
    throw last ?? new FerryError("network", "no server key");
  }

  /** The clock sealed requests and RESUME carry: the device's, corrected by what the
   *  server said (a sealed request more than 120 s off its clock is refused). */
  private now = (): number => Date.now() + this.clockOffsetMs;

  /** A sealed short-link POST, tried on each endpoint until one answers. A refusal whose
   *  `sent_ms` was over 120 s off the answer's `Date` corrects the clock by that `Date`
   *  and goes again, once (docs/protocol.md §3.1). */
  private async shortPost(path: string, token: string, body: Uint8Array): Promise<Uint8Array> {
    const key = await this.key();
    let last: FerryError | undefined;
    for (const ep of this.shortEndpoints()) {
      let corrected = false;
      for (;;) {
        try {
          const r = await new ShortLink(ep, key, this.timeoutMs, this.now).postSealed(path, token, body);
          this.shortGood = ep;
          return r;
        } catch (e) {
          const fe = asFerryError(e) as FerryError & { serverDateMs?: number };
          if (!corrected && fe.serverDateMs !== undefined) {
            corrected = true;
            this.clockOffsetMs = fe.serverDateMs - Date.now();
            continue;
          }
          if (fe.kind !== "network" && fe.kind !== "timeout") throw fe;
          last = fe;
          break;
        }
      }
    }
    throw last!;
  }

  private async shortCall<Req extends DescMessage, Resp extends DescMessage>(
    c: number, token: string, reqSchema: Req, req: MessageInitShape<Req>, respSchema: Resp,
  ): Promise<MessageShape<Resp>> {
    const body = await this.shortPost(cmd.PATHS[c], token, toBinary(reqSchema, create(reqSchema, req)));
    return decode(respSchema, body);
  }

  private requireToken(): string {
    if (!this.token) throw new FerryError("server", "not signed in", { code: ErrorCode.UNAUTHORIZED });
    return this.token;
  }

  /** A request over the long link when it is up, else over the sealed short link. */
  private async call<Req extends DescMessage, Resp extends DescMessage>(
    c: number, reqSchema: Req, req: MessageInitShape<Req>, respSchema: Resp,
  ): Promise<MessageShape<Resp>> {
    const token = this.requireToken();
    const link = this.link;
    if (link && !link.closed && cmd.ON_LINK.has(c)) {
      try {
        const f = await link.request(c, toBinary(reqSchema, create(reqSchema, req)), this.timeoutMs);
        return decode(respSchema, f.body);
      } catch (e) {
        const fe = asFerryError(e);
        // Lost with the link: only a request that may be applied twice goes again.
        if (!(fe.kind === "closed" && cmd.IDEMPOTENT.has(c))) throw fe;
      }
    }
    return this.shortCall(c, token, reqSchema, req, respSchema);
  }

  // ------------------------------------------------------------------ accounts

  async register(username: string, password: string): Promise<void> {
    await this.shortCall(cmd.REGISTER, "", RegisterReqSchema, { username, password }, RegisterRespSchema);
  }

  async signIn(username: string, password: string): Promise<void> {
    const r = await this.shortCall(cmd.AUTH, "", AuthReqSchema, { username, password, deviceId: this.deviceId }, AuthRespSchema);
    if (this._username !== undefined && this._username !== username) {
      // Another user on this store: their inbox starts over.
      this._synckey = 0n;
      this.cursors.clear();
      await this.store.set("synckey", "0");
      await this.store.set("groupCursors", {});
    }
    await this.forgetTicket();
    this.token = r.token;
    this._username = username;
    await this.store.set("token", r.token);
    await this.store.set("username", username);
  }

  async logout(): Promise<void> {
    const token = this.token;
    try {
      if (token) await this.shortCall(cmd.LOGOUT, token, LogoutReqSchema, {}, LogoutRespSchema);
    } catch (e) {
      const fe = asFerryError(e);
      if (!(fe.code === ErrorCode.UNAUTHORIZED || fe.code === ErrorCode.KICKED)) throw fe;
    } finally {
      await this.close();
    }
    this.token = undefined;
    await this.store.delete("token");
    await this.forgetTicket();
  }

  private async forgetTicket(): Promise<void> {
    this.ticket = undefined;
    await this.store.delete("ticket");
  }

  // ------------------------------------------------------------------ the long link

  /** Resolves at the first LOGIN answer; rejects on UNAUTHORIZED (and a wrong server key). */
  connect(): Promise<void> {
    if (!this.token) return Promise.reject(new FerryError("server", "not signed in", { code: ErrorCode.UNAUTHORIZED }));
    if (this._state === "online") return Promise.resolve();
    const p = new Promise<void>((resolve, reject) => this.connectWaiters.push({ resolve, reject }));
    if (!this.running) {
      this.running = true;
      this.loop = this.run();
    }
    return p;
  }

  /** Ends the link; the state is kept. Sends still waiting fail with kind "closed". */
  async close(): Promise<void> {
    this.running = false;
    this.wake?.();
    for (const d of this.dialings) d.cancel();
    this.link?.close();
    const closed = new FerryError("closed", "the client was closed");
    for (const w of this.connectWaiters.splice(0)) w.reject(closed);
    for (const w of this.linkWaiters.splice(0)) w.reject(closed);
    for (const s of this.sends.splice(0)) s.reject(closed);
    await this.loop;
    await this.chain;
  }

  private async pause(ms: number): Promise<void> {
    await new Promise<void>((r) => {
      const t = setTimeout(r, ms);
      this.wake = () => {
        clearTimeout(t);
        r();
      };
    });
    this.wake = undefined;
  }

  private fatal(e: FerryError): boolean {
    return e.kind === "server-key" || e.is(ErrorCode.UNAUTHORIZED) || e.is(ErrorCode.KICKED) || e.is(ErrorCode.BAD_CREDENTIALS);
  }

  private async run(): Promise<void> {
    let backoff = BACKOFF_MIN_MS;
    let reason: string | undefined;
    while (this.running) {
      // Moving from long-poll onto a WebSocket link that logged in meanwhile: no dial.
      let opened = this.switchTo;
      this.switchTo = undefined;
      if (!opened) {
        if (this._state !== "connecting") this.setState("connecting", reason ? { reason } : {});
        try {
          opened = await this.dial();
        } catch (e) {
          const fe = asFerryError(e);
          if (!this.running) break;
          if (this.fatal(fe)) {
            this.running = false;
            for (const w of this.connectWaiters.splice(0)) w.reject(fe);
            for (const w of this.linkWaiters.splice(0)) w.reject(fe);
            this.setState("offline", { reason: fe.message });
            return;
          }
          reason = fe.message;
          await this.pause(backoff / 2 + Math.random() * (backoff / 2));
          backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
          continue;
        }
      }
      if (!this.running) {
        opened.link.close();
        break;
      }
      const since = Date.now();
      reason = await this.online(opened);
      if (this.switchTo) continue;
      if (Date.now() - since > 5000) backoff = BACKOFF_MIN_MS;
      else if (this.running) {
        // A link that ended at once: back off before the next, as after a failure.
        await this.pause(backoff / 2 + Math.random() * (backoff / 2));
        backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
      }
    }
    this.switchTo?.link.close("the client was closed");
    this.switchTo = undefined;
    this.setState("offline", reason ? { reason } : {});
  }

  /** Races the endpoints (§7.4): the first starts at once, the next 2.5 s later or as
   *  soon as one fails, at most 3 at once; on each the transports in order. The first
   *  login wins; the others are cut short. */
  private dial(): Promise<LinkOpened & { endpoint: string }> {
    return this.key().then(
      (key) =>
        new Promise<LinkOpened & { endpoint: string }>((resolve, reject) => {
          const eps = this.endpoints();
          const racing = new Set<Dialing>();
          let next = 0;
          let done = false;
          let last: FerryError | undefined;
          let timer: ReturnType<typeof setTimeout> | undefined;
          const finish = () => {
            done = true;
            clearTimeout(timer);
            for (const d of racing) d.cancel();
          };
          const launch = (): void => {
            clearTimeout(timer);
            if (done) return;
            if (next >= eps.length || !this.running) {
              if (!racing.size) {
                done = true;
                reject(!this.running ? new FerryError("closed", "the client was closed") : (last ?? new FerryError("network", "no transport to try (no WebSocket and no long-poll)")));
              }
              return;
            }
            if (racing.size >= RACE_MAX) return;
            const ep = eps[next++];
            const d = new Dialing();
            racing.add(d);
            this.dialings.add(d);
            this.tryEndpoint(ep, key, d).then(
              (opened) => {
                racing.delete(d);
                this.dialings.delete(d);
                if (done) {
                  // Logged in after the winner: its login replaced the winner's on the
                  // server, which then kicks the winner — not a session end.
                  opened.link.close("cut short by a faster endpoint");
                  this.abandonedAt = Date.now();
                  return;
                }
                finish();
                resolve({ ...opened, endpoint: ep });
              },
              (e) => {
                racing.delete(d);
                this.dialings.delete(d);
                const fe = asFerryError(e);
                if (d.cancelled || fe.kind === "timeout") {
                  // Given up: its login may still land on the server.
                  this.abandonedAt = Date.now();
                }
                if (!d.cancelled && this.fatal(fe) && !done) {
                  finish();
                  reject(fe);
                  return;
                }
                if (!d.cancelled) last = fe;
                launch();
              },
            );
            if (next < eps.length) timer = setTimeout(launch, RACE_STAGGER_MS);
          };
          launch();
        }),
    );
  }

  /** Whether WebSocket can be tried, and a WebSocket link was up less than
   *  `longPollAfterMs` ago: then a failed WebSocket attempt is the server's trouble (a
   *  restart, an overload), not a network that blocks WebSocket — try it again after a
   *  back-off rather than long-poll (§7.4 step 3). Otherwise a restarted server would
   *  have its browsers move onto long-poll, a request per poll. */
  private wsWorkedLately(): boolean {
    return !!this.WsCtor && this.transports.includes("ws") && Date.now() - this.wsWorkedAt < this.longPollAfterMs;
  }

  /** One endpoint: its transports in order, until one logs in. */
  private async tryEndpoint(ep: string, key: Uint8Array, d: Dialing): Promise<LinkOpened> {
    let last: FerryError | undefined;
    const wsLately = this.wsWorkedLately();
    for (const t of this.transports) {
      if (t === "ws" && !this.WsCtor) continue;
      if (t === "lp" && wsLately) continue;
      if (d.cancelled || !this.running) throw new FerryError("closed", "cut short");
      try {
        return await this.attempt(ep, t, key, d);
      } catch (e) {
        const fe = asFerryError(e);
        if (this.fatal(fe)) throw fe;
        if (loginMayLand(fe)) this.abandonedAt = Date.now();
        last = fe;
      }
    }
    throw last ?? new FerryError("network", "no transport to try (no WebSocket and no long-poll)");
  }

  private carrier(ep: string, t: Transport, d: Dialing): Carrier {
    const c = t === "ws" ? new WsCarrier(ep, this.WsCtor!) : new LpCarrier(ep, this.timeoutMs);
    d.carriers.push(c);
    if (d.cancelled) c.close();
    return c;
  }

  private async attempt(ep: string, t: Transport, key: Uint8Array, d: Dialing): Promise<LinkOpened> {
    // echoInAck: our own messages' entries come in their SendAck instead of a NOTIFY
    // beside it (docs/protocol.md §2, *Your own entry in the ack*; pumpSends applies them).
    const login = { token: this.requireToken(), synckey: this._synckey, clientVersion: CLIENT_VERSION, protocol: 1, echoInAck: true };
    let ticket = this.ticket && this.ticket.expiresMs > Date.now() + 5000 ? this.ticket : undefined;
    let opened: LinkOpened;
    try {
      opened = await Link.open(this.carrier(ep, t, d), key, login, ticket, this.timeoutMs, this.now());
    } catch (e) {
      const fe = asFerryError(e);
      if (!ticket || !(fe.is(ErrorCode.RESUME_REFUSED) || fe.kind === "protocol")) throw fe;
      // Refused: forget the ticket and do the full handshake on a new connection.
      await this.forgetTicket();
      ticket = undefined;
      opened = await Link.open(this.carrier(ep, t, d), key, login, undefined, this.timeoutMs);
    }
    if (opened.ticket !== this.ticket) {
      this.ticket = opened.ticket;
      if (opened.ticket) {
        const st: StoredTicket = { ticket: hex(opened.ticket.ticket), secret: hex(opened.ticket.secret), expiresMs: opened.ticket.expiresMs };
        await this.store.set("ticket", st);
      } else await this.store.delete("ticket");
    }
    return opened;
  }

  /** Runs a logged-in link until it ends; returns why it ended. */
  private async online(o: LinkOpened & { endpoint: string }): Promise<string> {
    const { link, login } = o;
    const skew = Number(login.serverTimeMs) - Date.now();
    if (login.serverTimeMs > 0n && Math.abs(skew - this.clockOffsetMs) > 5000) this.clockOffsetMs = skew;
    if (login.token) {
      this.token = login.token;
      await this.store.set("token", login.token);
    }
    if (login.username && login.username !== this._username) {
      this._username = login.username;
      await this.store.set("username", login.username);
    }
    this.shortGood = o.endpoint;
    if (this.lastEndpoint !== o.endpoint) {
      this.lastEndpoint = o.endpoint;
      await this.store.set("lastEndpoint", o.endpoint);
    }
    const ls = new LinkSync(link);
    this.link = link;
    this.ls = ls;
    let kicked: string | undefined;
    link.setOnPush((f) => {
      const k = this.onPush(ls, f);
      if (k) kicked = k;
    });
    this.setState("online", { transport: link.transport, endpoint: o.endpoint });
    for (const w of this.connectWaiters.splice(0)) w.resolve();
    for (const w of this.linkWaiters.splice(0)) w.resolve(link);

    // The groups that moved while away, and the inbox.
    void this.groupList(ls);
    void this.refreshEndpoints();
    if (login.latestSeq > this._synckey) this.startSync(ls);
    void this.pumpSends();

    const idle = Number(login.idleTimeoutMs) || 0;
    let every = (login.heartbeatSecs || 30) * 1000;
    if (idle) every = Math.min(every, (idle * 4) / 5);
    const beat = setInterval(() => {
      const body = toBinary(HeartbeatSchema, create(HeartbeatSchema, { synckey: this._synckey }));
      link.request(cmd.HEARTBEAT, body, this.timeoutMs).catch(() => link.close("heartbeat unanswered"));
    }, every);
    // On long-poll: try WebSocket again now and then, and move onto it once it logs in.
    const probe = link.transport === "lp" && this.WsCtor && this.transports.includes("ws") ? this.probeWs(link) : undefined;
    const reason = await link.whenClosed();
    clearInterval(beat);
    clearTimeout(ls.gapTimer);
    if (this.link === link) {
      this.link = undefined;
      this.ls = undefined;
    }
    if (link.transport === "ws") this.wsWorkedAt = Date.now();
    if (probe) {
      // The probe's login replaces this session on the server, which KICKs this link:
      // then wait for the probe's answer. A link lost otherwise ends the probe too.
      if (!kicked || !probe.attempting()) probe.stop();
      const better = await probe.result;
      if (better && this.running) {
        this.switchTo = better;
        return `moved to WebSocket (${better.endpoint})`;
      }
      if (better) better.link.close("the client was closed");
    }
    if (kicked) {
      if (Date.now() - this.abandonedAt < SELF_KICK_WINDOW_MS) {
        // Replaced by this client's own late login (an attempt cut short or left
        // unanswered): reconnect.
        return `${kicked} (by this client's own cut-short login)`;
      }
      this.running = false;
      return kicked;
    }
    return reason;
  }

  /** While `link` (long-poll) is up: every `wsRetryMs` one WebSocket attempt per
   *  endpoint, in order, in the background; the first that logs in closes `link` and
   *  is the result (undefined once stopped without one). */
  private probeWs(link: Link): {
    result: Promise<(LinkOpened & { endpoint: string }) | undefined>;
    stop: () => void;
    attempting: () => boolean;
  } {
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    let wake: (() => void) | undefined;
    let d: Dialing | undefined;
    const stop = () => {
      stopped = true;
      clearTimeout(timer);
      wake?.();
      d?.cancel();
    };
    const result = (async () => {
      while (!stopped && this.running) {
        await new Promise<void>((r) => {
          wake = r;
          timer = setTimeout(r, this.wsRetryMs);
        });
        if (stopped || !this.running) return undefined;
        const round = new Dialing();
        d = round;
        this.dialings.add(round);
        try {
          const key = await this.key();
          for (const ep of this.endpoints()) {
            if (round.cancelled) break;
            try {
              const opened = await this.attempt(ep, "ws", key, round);
              if (stopped || round.cancelled) {
                // The long-poll link ended meanwhile: the reconnect dials afresh.
                opened.link.close("cut short");
                this.abandonedAt = Date.now();
                return undefined;
              }
              d = undefined; // its carrier is the new link: stop() must not close it
              link.close("moving to WebSocket");
              return { ...opened, endpoint: ep };
            } catch (e) {
              if (loginMayLand(asFerryError(e))) this.abandonedAt = Date.now();
            }
          }
        } catch {
          // No key: tried again at the next round.
        } finally {
          this.dialings.delete(round);
          d = undefined;
        }
      }
      return undefined;
    })();
    return { result, stop, attempting: () => d !== undefined };
  }

  /** A push; returns a reason when it ends this device's session (KICK KICKED). */
  private onPush(ls: LinkSync, f: Frame): string | undefined {
    try {
      switch (f.cmd) {
        case cmd.NOTIFY:
          this.onNotify(ls, decode(NotifySchema, f.body));
          break;
        case cmd.GROUP_NOTIFY: {
          const n = decode(GroupNotifySchema, f.body);
          const cursor = this.cursors.get(n.groupId) ?? 0n;
          if (n.latestGseq <= cursor) break;
          const es = n.entries;
          const continues =
            cursor > 0n && es.length > 0 && es[0].gseq === cursor + 1n && es[es.length - 1].gseq === n.latestGseq &&
            es.every((e, i) => i === 0 || e.gseq === es[i - 1].gseq + 1n);
          if (continues && !ls.groupBusy.has(n.groupId)) this.applyGroup(n.groupId, es);
          else this.startGroupSync(ls, n.groupId);
          break;
        }
        case cmd.TYPING_PUSH:
          this.emit("typing", { from: decode(TypingSchema, f.body).to });
          break;
        case cmd.KICK: {
          const k = decode(KickSchema, f.body);
          if (k.code === ErrorCode.KICKED) {
            ls.link.close(`kicked: ${k.reason}`);
            return `kicked: ${k.reason || "this session ended"}`;
          }
          ls.link.close(`the server closes the link: ${k.reason}`);
          break;
        }
        default:
          break;
      }
    } catch (e) {
      ls.link.close(`bad push: ${(e as Error).message}`);
    }
    return undefined;
  }

  // ------------------------------------------------------------------ sync

  private onNotify(ls: LinkSync, n: MessageShape<typeof NotifySchema>): void {
    if (n.latestSeq <= this._synckey) return;
    const es = n.entries;
    const inline =
      es.length > 0 && es[es.length - 1].seq === n.latestSeq && es.every((e, i) => i === 0 || e.seq === es[i - 1].seq + 1n);
    if (!inline) {
      this.startSync(ls);
      return;
    }
    for (const e of es) if (e.seq > this._synckey && ls.held.size < HELD_MAX) ls.held.set(e.seq, e);
    if (ls.held.size >= HELD_MAX) this.startSync(ls);
    this.drainHeld(ls);
  }

  private drainHeld(ls: LinkSync): void {
    for (const s of ls.held.keys()) if (s <= this._synckey) ls.held.delete(s);
    const run: Entry[] = [];
    for (let s = this._synckey + 1n; ls.held.has(s); s++) {
      run.push(ls.held.get(s)!);
      ls.held.delete(s);
    }
    if (run.length) this.applyInbox(ls, run);
    if (!ls.held.size) {
      clearTimeout(ls.gapTimer);
      ls.gapTimer = undefined;
    } else if (!ls.syncing && !ls.gapTimer) {
      ls.gapTimer = setTimeout(() => {
        ls.gapTimer = undefined;
        this.startSync(ls);
      }, GAP_WAIT_MS);
    }
  }

  private startSync(ls: LinkSync): void {
    if (ls.syncing) {
      ls.resync = true;
      return;
    }
    ls.syncing = true;
    ls.resync = false;
    clearTimeout(ls.gapTimer);
    ls.gapTimer = undefined;
    void this.syncLoop(ls);
  }

  private async syncLoop(ls: LinkSync): Promise<void> {
    try {
      for (;;) {
        ls.resync = false;
        const body = toBinary(SyncReqSchema, create(SyncReqSchema, { synckey: this._synckey, limit: 0 }));
        const r = decode(SyncRespSchema, (await ls.link.request(cmd.SYNC, body, this.timeoutMs)).body);
        this.applyInbox(ls, r.entries, r.synckey);
        if (!(r.more || ls.resync || r.latestSeq > this._synckey)) break;
      }
    } catch (e) {
      ls.link.close(`sync failed: ${(e as Error).message}`);
    } finally {
      ls.syncing = false;
    }
    this.drainHeld(ls);
  }

  /** Applies inbox entries above the synckey, in order; `jumpTo` is a sync answer's synckey. */
  private applyInbox(ls: LinkSync, entries: Entry[], jumpTo?: bigint): void {
    const out: Emitted[] = [];
    for (const e of entries) {
      if (e.seq <= this._synckey) continue;
      this._synckey = e.seq;
      out.push(["entry", e]);
      const k = e.kind;
      switch (k.case) {
        case "message":
          out.push(["message", { seq: e.seq, message: k.value }]);
          break;
        case "recall":
          out.push(["recall", k.value]);
          break;
        case "read":
          out.push(["read", k.value]);
          break;
        case "friend":
          out.push(["friend", k.value]);
          break;
        case "edit":
          out.push(["edit", k.value]);
          break;
        case "reaction":
          out.push(["reaction", k.value]);
          break;
        case "hide":
          out.push(["hide", k.value]);
          break;
        case "pin":
          out.push(["pin", k.value]);
          break;
        case "conv":
          out.push(["conv", k.value]);
          break;
        case "group":
          out.push(["group", k.value]);
          if (k.value.kind === GroupEvent_Kind.CREATED || k.value.kind === GroupEvent_Kind.JOINED) {
            this.startGroupSync(ls, k.value.groupId);
          } else if (k.value.kind === GroupEvent_Kind.REMOVED || k.value.kind === GroupEvent_Kind.LEFT) {
            const me = this._username;
            if (!k.value.users.length || (me && k.value.users.includes(me))) this.cursors.delete(k.value.groupId);
          }
          break;
        default:
          break;
      }
    }
    if (jumpTo !== undefined && jumpTo > this._synckey) this._synckey = jumpTo;
    this.commit(out);
  }

  /** Hands the events to the app — in order — then, once every listener that returned a
   *  promise has settled (an app that keeps what it shows stores it there), stores the
   *  synckey and cursors that cover them. So a page closed in between loses nothing: its
   *  next start syncs those entries again (in-memory, within a session, each is handed
   *  over once; across a crash in that window, at least once — keep them by seq / id). */
  private commit(events: Emitted[]): void {
    const synckey = this._synckey.toString();
    const cursors: Record<string, string> = {};
    for (const [g, c] of this.cursors) cursors[g.toString()] = c.toString();
    this.chain = this.chain
      .then(async () => {
        const pending: Promise<unknown>[] = [];
        for (const [k, v] of events) pending.push(...this.emit(k, v as never));
        if (pending.length) await Promise.all(pending);
        await this.store.set("synckey", synckey);
        await this.store.set("groupCursors", cursors);
      })
      .catch((e) => console.error("ferry: storing the sync state failed", e));
  }

  /** Asks for the endpoint list at the first login, then at a login `refresh_secs`
   *  after the last answer (§7.2; not on every reconnect: after a server restart every
   *  device logs in at once): its HTTP entries (every port serves WebSocket and
   *  long-poll) become candidates after the last good endpoint. */
  private async refreshEndpoints(): Promise<void> {
    if (this.listAskedAt && Date.now() - this.listAskedAt < this.listEveryMs) return;
    try {
      // Over the short link, as the Rust SDK does: the gateway builds the default list
      // from the listener a request came in on.
      const r = await this.shortCall(cmd.ENDPOINTS, "", EndpointsReqSchema, { version: this.listVersion }, EndpointsRespSchema);
      this.listAskedAt = Date.now();
      this.listEveryMs = Math.max(10, r.refreshSecs || 600) * 1000;
      if (r.unchanged) return;
      const http = r.endpoints
        .filter((e) => e.transport === WireTransport.HTTP && e.ip && e.port)
        .map((e) => (e.ip.includes(":") ? `[${e.ip}]:${e.port}` : `${e.ip}:${e.port}`));
      this.listed = [...new Set(http)];
      this.listVersion = r.version;
      await this.store.set("endpoints", { version: r.version.toString(), endpoints: this.listed });
    } catch {
      // Kept as it was; asked again at the next login.
    }
  }

  private async groupList(ls: LinkSync): Promise<void> {
    try {
      const f = await ls.link.request(cmd.GROUP_LIST, new Uint8Array(0), this.timeoutMs);
      for (const g of decode(GroupListRespSchema, f.body).groups) {
        if (g.latestGseq > (this.cursors.get(g.groupId) ?? 0n)) this.startGroupSync(ls, g.groupId);
      }
    } catch {
      // The next login asks again.
    }
  }

  private startGroupSync(ls: LinkSync, group: bigint): void {
    if (ls.groupBusy.has(group)) {
      ls.groupAgain.add(group);
      return;
    }
    ls.groupBusy.add(group);
    void this.groupSyncLoop(ls, group);
  }

  private async groupSyncLoop(ls: LinkSync, group: bigint): Promise<void> {
    try {
      for (;;) {
        ls.groupAgain.delete(group);
        const after = this.cursors.get(group) ?? 0n;
        const body = toBinary(GroupSyncReqSchema, create(GroupSyncReqSchema, { groupId: group, after, limit: 0 }));
        let f: Frame;
        try {
          f = await ls.link.request(cmd.GROUP_SYNC, body, this.timeoutMs);
        } catch (e) {
          const fe = asFerryError(e);
          if (fe.kind === "server" && !fe.retryable) {
            // No longer a member (or the group is gone): forget it.
            this.cursors.delete(group);
            this.commit([]);
            return;
          }
          throw fe;
        }
        const r = decode(GroupSyncRespSchema, f.body);
        this.applyGroup(group, r.entries, r.cursor);
        const cursor = this.cursors.get(group) ?? 0n;
        if (!(r.more || ls.groupAgain.has(group) || r.latestGseq > cursor)) break;
      }
    } catch (e) {
      if (!ls.link.closed) ls.link.close(`group sync failed: ${(e as Error).message}`);
    } finally {
      ls.groupBusy.delete(group);
    }
  }

  private applyGroup(group: bigint, entries: GroupEntry[], jumpTo?: bigint): void {
    const out: Emitted[] = [];
    let cursor = this.cursors.get(group) ?? 0n;
    for (const e of entries) {
      if (e.gseq <= cursor) continue;
      cursor = e.gseq;
      out.push(["groupEntry", { groupId: group, entry: e }]);
      const k = e.kind;
      switch (k.case) {
        case "message":
          out.push(["groupMessage", { groupId: group, gseq: e.gseq, message: k.value }]);
          break;
        case "recall":
          out.push(["recall", k.value]);
          break;
        // The operations carry their group: filled in where the log left it out.
        case "edit":
          if (!k.value.groupId) k.value.groupId = group;
          out.push(["edit", k.value]);
          break;
        case "reaction":
          if (!k.value.groupId) k.value.groupId = group;
          out.push(["reaction", k.value]);
          break;
        case "pin":
          if (!k.value.groupId) k.value.groupId = group;
          out.push(["pin", k.value]);
          break;
        case "retention":
          if (!k.value.groupId) k.value.groupId = group;
          out.push(["retention", k.value]);
          break;
        case undefined:
          out.push(["noContent", { groupId: group, gseq: e.gseq }]);
          break;
        default:
          break;
      }
    }
    if (jumpTo !== undefined && jumpTo > cursor) cursor = jumpTo;
    this.cursors.set(group, cursor);
    this.commit(out);
  }

  // ------------------------------------------------------------------ sending

  private waitLink(): Promise<Link> {
    if (this.link && !this.link.closed) return Promise.resolve(this.link);
    if (!this.running) return Promise.reject(new FerryError("closed", "not connected: call connect()"));
    return new Promise((resolve, reject) => this.linkWaiters.push({ resolve, reject }));
  }

  private enqueueSend(msg: SendMsg): Promise<SendAck> {
    return new Promise<SendAck>((resolve, reject) => {
      this.sends.push({ msg, resolve, reject });
      void this.pumpSends();
    });
  }

  /** Sends the queued messages one after another, each until acknowledged: after a lost
   *  link, on the next one, and after RATE_LIMITED once its wait has passed — always with
   *  the same client_msg_id, and in order. */
  private async pumpSends(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      while (this.sends.length) {
        const head = this.sends[0];
        let link: Link;
        try {
          link = await this.waitLink();
        } catch (e) {
          for (const s of this.sends.splice(0)) s.reject(asFerryError(e));
          break;
        }
        try {
          const f = await link.request(cmd.SEND, toBinary(SendMsgSchema, head.msg), this.timeoutMs);
          if (this.sends[0] === head) this.sends.shift();
          const ack = decode(SendAckSchema, f.body);
          // Our own entry, as a notify of that one entry would have carried it.
          if (ack.entry && this.ls) {
            this.onNotify(this.ls, create(NotifySchema, { latestSeq: ack.entry.seq, entries: [ack.entry] }));
          }
          head.resolve(ack);
        } catch (e) {
          const fe = asFerryError(e);
          if (this.sends[0] !== head) continue; // rejected by close()
          if (fe.is(ErrorCode.RATE_LIMITED)) {
            await sleep(Math.max(fe.retryAfterMs ?? 0, 50));
          } else if (fe.kind === "closed" || fe.kind === "timeout" || fe.kind === "network" || fe.retryable) {
            await sleep(fe.retryAfterMs ?? 100);
          } else {
            this.sends.shift();
            head.reject(fe);
          }
        }
      }
    } finally {
      this.sending = false;
    }
  }

  sendText(to: string, text: string, opts: SendOptions = {}): Promise<SendAck> {
    return this.enqueueSend(create(SendMsgSchema, { clientMsgId: clientMsgId(opts), to, text }));
  }

  sendGroupText(groupId: bigint, text: string, mentions: string[] = [], opts: SendOptions = {}): Promise<SendAck> {
    return this.enqueueSend(create(SendMsgSchema, { clientMsgId: clientMsgId(opts), groupId, text, mentions }));
  }

  async recall(msgId: bigint): Promise<void> {
    await this.call(cmd.RECALL, RecallReqSchema, { msgId }, EmptySchema);
  }

  async markRead(peer: string, msgId: bigint): Promise<void> {
    await this.call(cmd.READ, ReadReqSchema, { peer, msgId }, EmptySchema);
  }

  async markGroupRead(groupId: bigint, gseq: bigint): Promise<void> {
    await this.call(cmd.READ, ReadReqSchema, { groupId, gseq }, EmptySchema);
  }

  /** Tells `to` this user is typing; only over a live long link (never stored): a no-op
   *  while offline. */
  async typing(to: string): Promise<void> {
    const link = this.link;
    if (!link || link.closed) return;
    await link.request(cmd.TYPING, toBinary(TypingSchema, create(TypingSchema, { to })), this.timeoutMs);
  }

  // ------------------------------------------------------------------ message operations

  /** Replies with a text to message `replyTo`, in that message's conversation (the 1:1 chat
   *  or the group); queued and retried like `sendText`. The stored reply carries a `quote`
   *  of the message answered. */
  reply(replyTo: bigint, text: string, opts: SendOptions = {}): Promise<SendAck> {
    if (!isU64(replyTo) || replyTo === 0n) return Promise.reject(invalid("replyTo must name a message (a non-zero u64)"));
    return this.enqueueSend(create(SendMsgSchema, { clientMsgId: clientMsgId(opts), replyTo, text }));
  }

  /** Replaces the text (a media message's caption) of a message this user sent, within the
   *  server's edit window. Both sides (or the group) get an `edit` event. Safe to retry. */
  async edit(msgId: bigint, text: string): Promise<void> {
    await this.call(cmd.EDIT, EditReqSchema, { msgId: msgIdArg(msgId), text }, EmptySchema);
  }

  /** Adds a reaction (an emoji: 1–32 bytes, no whitespace) to a message this user may read. */
  async react(msgId: bigint, emoji: string): Promise<void> {
    await this.call(cmd.REACT, ReactReqSchema, { msgId: msgIdArg(msgId), emoji, add: true }, EmptySchema);
  }

  /** Takes a reaction back. */
  async unreact(msgId: bigint, emoji: string): Promise<void> {
    await this.call(cmd.REACT, ReactReqSchema, { msgId: msgIdArg(msgId), emoji, add: false }, EmptySchema);
  }

  /** The reactions on a message: per emoji its count and whether this user holds it (most
   *  used first); with `emoji`, also who reacted with it, `limit` (0: 50, at most 100) a
   *  page from `after` (0, then the answer's `nextAfter`; 0 there: no more). */
  async reactions(msgId: bigint, opts: { emoji?: string; after?: bigint; limit?: number } = {}): Promise<ReactionsResp> {
    if (opts.emoji === "") throw invalid("emoji is empty (leave it out for every emoji's count)");
    return this.call(cmd.REACTIONS, ReactionsReqSchema, {
      msgId: msgIdArg(msgId), emoji: opts.emoji ?? "", after: opts.after ?? 0n, limit: opts.limit ?? 0,
    }, ReactionsRespSchema);
  }

  /** Deletes messages (1–100) for this user only: every device of theirs gets a `hide`
   *  event; nobody else's chat changes. Safe to retry. */
  async hide(msgIds: bigint[]): Promise<void> {
    await this.call(cmd.HIDE, HideReqSchema, { msgIds: msgIds.map(msgIdArg) }, EmptySchema);
  }

  /** Pins a message of a conversation (in a group: its owner and admins only); both sides
   *  (or the group) get a `pin` event. At most 50 per conversation. */
  async pin(conversation: Conversation, msgId: bigint): Promise<void> {
    await this.call(cmd.PIN, PinReqSchema, { ...convArg(conversation), msgId: msgIdArg(msgId), pin: true }, EmptySchema);
  }

  async unpin(conversation: Conversation, msgId: bigint): Promise<void> {
    await this.call(cmd.PIN, PinReqSchema, { ...convArg(conversation), msgId: msgIdArg(msgId), pin: false }, EmptySchema);
  }

  /** A conversation's pinned messages, newest first. */
  async pins(conversation: Conversation): Promise<PinnedMessage[]> {
    return (await this.call(cmd.PINS, PinsReqSchema, convArg(conversation), PinsRespSchema)).pins;
  }

  /** Searches the messages this user may read (docs/protocol.md, Search): `text` (all the
   *  words; "a phrase"; Chinese and Japanese as written) and the filters `peer`, `groupId`,
   *  `sender`, `afterMs`, `beforeMs`, `kinds`, `order`, `limit`, `highlight`; page on with the
   *  answer's `next` as `page` (empty: the last page). The index follows the server's store
   *  within about a second. */
  search(query: SearchQuery): Promise<SearchResp> {
    return this.call(cmd.SEARCH, SearchReqSchema, query, SearchRespSchema);
  }

  // ------------------------------------------------------------------ forwarding, conversation state

  /** Forwards message `msgId` (one this user may read) into `to` (the 1:1 chat with a user,
   *  or a group); queued and retried like `sendText`. The server copies its text and media
   *  (no re-upload); the new message carries `forwarded` (the original's author and time). */
  forward(to: Conversation, msgId: bigint, opts: SendOptions = {}): Promise<SendAck> {
    let c: { peer: string; groupId: bigint };
    try {
      c = convArg(to);
      msgIdArg(msgId);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.enqueueSend(create(SendMsgSchema, { clientMsgId: clientMsgId(opts), to: c.peer, groupId: c.groupId, forwardOf: msgId }));
  }

  /** Changes conversations' states (at most 64 in one call; only the fields given change)
   *  and answers every conversation state of this user. Each change reaches all of this
   *  user's devices as a `conv` event. One refused: none applied. */
  async convSet(changes: ConvChange[]): Promise<ConvState[]> {
    return (await this.call(cmd.CONV, ConvReqSchema, { set: changes }, ConvRespSchema)).conversations;
  }

  /** Every conversation state of this user (archived, unread, muted, draft, cleared,
   *  retention). */
  conversations(): Promise<ConvState[]> {
    return this.convSet([]);
  }

  /** One conversation's change; answers its state after it. */
  private async convOne(conversation: Conversation, change: { archived?: boolean; unread?: boolean; mutedUntilMs?: bigint; draft?: string; clear?: boolean; retentionSecs?: number }): Promise<ConvState> {
    const c = convArg(conversation);
    const all = await this.convSet([{ ...change, ...c }]);
    return all.find((s) => s.peer === c.peer && s.groupId === c.groupId) ?? create(ConvStateSchema, c);
  }

  /** Archives (or unarchives) a conversation on every device of this user. */
  archive(conversation: Conversation, archived = true): Promise<ConvState> {
    return this.convOne(conversation, { archived });
  }

  /** Mutes a conversation until `untilMs` (unix ms; -1n: until unmuted; 0n unmutes). The
   *  same setting as the push settings' PUSH_MODE_MUTED. */
  mute(conversation: Conversation, untilMs: bigint): Promise<ConvState> {
    if (typeof untilMs !== "bigint" || untilMs < -1n) return Promise.reject(invalid("untilMs is a bigint: -1n, 0n or a unix time in ms"));
    return this.convOne(conversation, { mutedUntilMs: untilMs });
  }

  /** Marks a conversation unread (or takes the mark away; reading it does too). */
  markUnread(conversation: Conversation, unread = true): Promise<ConvState> {
    return this.convOne(conversation, { unread });
  }

  /** Keeps the composer's unsent text of a conversation on every device of this user
   *  ("" removes it; at most 4 000 characters; the latest write wins). */
  setDraft(conversation: Conversation, draft: string): Promise<ConvState> {
    return this.convOne(conversation, { draft });
  }

  /** Clears a conversation's history for this user: every message up to now, on every
   *  device of theirs (`clearedBeforeMsgId`); nobody else's. */
  clearHistory(conversation: Conversation): Promise<ConvState> {
    return this.convOne(conversation, { clear: true });
  }

  /** Sets a conversation's own retention for everyone in it, in seconds (0 removes it;
   *  else at least 60). In a group: its owner and admins only. */
  setRetention(conversation: Conversation, secs: number): Promise<ConvState> {
    if (!Number.isInteger(secs) || secs < 0 || secs > 0xffffffff) return Promise.reject(invalid("secs is a whole number of seconds (0, or at least 60)"));
    return this.convOne(conversation, { retentionSecs: secs });
  }

  // ------------------------------------------------------------------ friends

  findUser(username: string): Promise<FindUserResp> {
    return this.call(cmd.FIND_USER, FindUserReqSchema, { username }, FindUserRespSchema);
  }
  async requestFriend(username: string, greeting = ""): Promise<void> {
    await this.call(cmd.FRIEND_REQUEST, FriendRequestReqSchema, { username, greeting }, FriendActionRespSchema);
  }
  async acceptFriend(username: string): Promise<void> {
    await this.call(cmd.FRIEND_ACCEPT, FriendActionReqSchema, { username }, FriendActionRespSchema);
  }
  async declineFriend(username: string): Promise<void> {
    await this.call(cmd.FRIEND_DECLINE, FriendActionReqSchema, { username }, FriendActionRespSchema);
  }
  async removeFriend(username: string): Promise<void> {
    await this.call(cmd.FRIEND_REMOVE, FriendActionReqSchema, { username }, FriendActionRespSchema);
  }
  async friends(): Promise<Friend[]> {
    return (await this.call(cmd.FRIEND_LIST, FriendListReqSchema, { sinceVersion: 0n }, FriendListRespSchema)).friends;
  }

  // ------------------------------------------------------------------ groups

  private group(r: MessageShape<typeof GroupRespSchema>): Group {
    if (!r.group) throw new FerryError("protocol", "a group answer without the group");
    return r.group;
  }
  async createGroup(name: string, members: string[], shareHistory = false): Promise<Group> {
    return this.group(await this.call(cmd.GROUP_CREATE, GroupCreateReqSchema, { name, members, shareHistory }, GroupRespSchema));
  }
  async addMembers(groupId: bigint, usernames: string[]): Promise<Group> {
    return this.group(await this.call(cmd.GROUP_ADD, GroupMembersReqSchema, { groupId, usernames }, GroupRespSchema));
  }
  async removeMembers(groupId: bigint, usernames: string[]): Promise<Group> {
    return this.group(await this.call(cmd.GROUP_REMOVE, GroupMembersReqSchema, { groupId, usernames }, GroupRespSchema));
  }
  async leaveGroup(groupId: bigint): Promise<void> {
    await this.call(cmd.GROUP_LEAVE, GroupReqSchema, { groupId }, GroupRespSchema);
  }
  async groupInfo(groupId: bigint): Promise<Group> {
    return this.group(await this.call(cmd.GROUP_INFO, GroupReqSchema, { groupId }, GroupRespSchema));
  }
  async groups(): Promise<Group[]> {
    return (await this.call(cmd.GROUP_LIST, EmptySchema, {}, GroupListRespSchema)).groups;
  }
  groupReads(groupId: bigint, gseq: bigint): Promise<GroupReadsResp> {
    return this.call(cmd.GROUP_READS, GroupReadsReqSchema, { groupId, gseq }, GroupReadsRespSchema);
  }

  // ------------------------------------------------------------------ media

  /** `media/create` over the sealed short link (so the answer carries an upload key). */
  private async mediaCreate(data: Uint8Array, kind: MediaKind, contentType: string): Promise<MediaCreateResp> {
    return this.shortCall(cmd.MEDIA_CREATE, this.requireToken(), MediaCreateReqSchema, {
      size: BigInt(data.length), contentType, sha256: hex(sha256(data)), kind, chunkSize: 0,
    }, MediaCreateRespSchema);
  }

  /** Uploads `data` from where the server says it stands, UPLOAD_WINDOW chunks in flight,
   *  then finishes it. */
  private async upload(u: MediaCreateResp, data: Uint8Array, progress: (sent: number, total: number) => void): Promise<MediaRef> {
    const token = this.requireToken();
    const status = await this.shortCall(cmd.MEDIA_STATUS, token, MediaStatusReqSchema, { mediaId: u.mediaId }, MediaChunkAckSchema);
    if (status.size !== BigInt(data.length)) {
      throw new FerryError("protocol", `upload ${u.mediaId} is for ${status.size} bytes, not ${data.length}`);
    }
    if (!status.complete) {
      const chunk = Math.max(u.chunkSize, 1);
      const start = Number(status.nextOffset) - (Number(status.nextOffset) % chunk);
      let next = start;
      let sent = start;
      progress(sent, data.length);
      const key = u.uploadKey.length === 32 ? u.uploadKey : undefined;
      const ep = this.shortEndpoints()[0];
      const worker = async () => {
        while (next < data.length) {
          const off = next;
          next += chunk;
          const bytes = data.subarray(off, Math.min(off + chunk, data.length));
          for (let tries = 1; ; tries++) {
            try {
              if (key) {
                const req = create(MediaChunkReqSchema, { mediaId: u.mediaId, offset: BigInt(off), data: sealChunk(key, u.mediaId, BigInt(off), bytes) });
                await new ShortLink(ep, await this.key(), this.timeoutMs, this.now).postPlain(cmd.PATHS[cmd.MEDIA_CHUNK], toBinary(MediaChunkReqSchema, req), MediaChunkAckSchema);
              } else {
                await this.shortCall(cmd.MEDIA_CHUNK, token, MediaChunkReqSchema, { mediaId: u.mediaId, offset: BigInt(off), data: bytes }, MediaChunkAckSchema);
              }
              break;
            } catch (e) {
              const fe = asFerryError(e);
              if (!fe.retryable || tries >= 5) throw fe;
              await sleep(fe.retryAfterMs ?? 200 * tries);
            }
          }
          sent += bytes.length;
          progress(sent, data.length);
        }
      };
      await Promise.all(Array.from({ length: UPLOAD_WINDOW }, worker));
    }
    const r = await this.shortCall(cmd.MEDIA_FINISH, token, MediaFinishReqSchema, { mediaId: u.mediaId }, MediaFinishRespSchema);
    if (!r.media) throw new FerryError("protocol", "media/finish answered no media");
    return r.media;
  }

  /** The image order of docs/protocol.md (Media): create the original, upload + finish the
   *  thumbnail, send the message, then upload + finish the original. */
  async sendImage(
    to: { user: string } | { groupId: bigint },
    image: Uint8Array,
    opts: {
      contentType: string; width?: number; height?: number; thumbnail: Uint8Array;
      thumbWidth?: number; thumbHeight?: number;
      onProgress?: (p: SendProgress) => void; onSent?: (ack: SendAck) => void;
    } & SendOptions,
  ): Promise<SendAck> {
    const original = await this.mediaCreate(image, MediaKind.MEDIA_IMAGE, opts.contentType);
    const thumb = await this.mediaCreate(opts.thumbnail, MediaKind.MEDIA_THUMBNAIL, "image/jpeg");
    const report = (phase: SendProgress["phase"]) => (sent: number, total: number) => opts.onProgress?.({ phase, sent, total });
    const t = await this.upload(thumb, opts.thumbnail, report("thumbnail"));
    const media = create(MediaRefSchema, {
      mediaId: original.mediaId, kind: MediaKind.MEDIA_IMAGE, size: BigInt(image.length),
      contentType: opts.contentType, width: opts.width ?? 0, height: opts.height ?? 0, thumbId: t.mediaId || thumb.mediaId,
    });
    const msg = create(SendMsgSchema, { clientMsgId: clientMsgId(opts), media });
    if ("user" in to) msg.to = to.user;
    else msg.groupId = to.groupId;
    const ack = await this.enqueueSend(msg);
    try {
      opts.onSent?.(ack);
    } catch (e) {
      console.error("ferry: onSent threw", e);
    }
    await this.upload(original, image, report("original"));
    return ack;
  }

  /** GET /v1/media/{id} in 512 KiB ranges; waits while the original is still uploading. */
  async downloadMedia(mediaId: string, opts: { waitMs?: number; onProgress?: (got: number, total: number) => void } = {}): Promise<Uint8Array> {
    const token = this.requireToken();
    const deadline = Date.now() + (opts.waitMs ?? 60000);
    const parts: Uint8Array[] = [];
    let got = 0;
    let total: number | undefined;
    while (total === undefined || got < total) {
      let r;
      try {
        r = await this.shortGet(`media/${encodeURIComponent(mediaId)}`, {
          Authorization: `Bearer ${token}`,
          Range: `bytes=${got}-${got + DOWNLOAD_RANGE - 1}`,
        });
      } catch (e) {
        const fe = asFerryError(e);
        if (fe.retryable && Date.now() < deadline) {
          await sleep(Math.min(Math.max(fe.retryAfterMs ?? 200, 50), Math.max(deadline - Date.now(), 0)));
          continue;
        }
        throw fe;
      }
      const range = r.headers.get("content-range");
      const m = range?.match(/\/(\d+)\s*$/);
      total = m ? Number(m[1]) : got + r.body.length;
      if (!r.body.length) break;
      parts.push(r.body);
      got += r.body.length;
      opts.onProgress?.(got, total);
    }
    const out = new Uint8Array(got);
    let o = 0;
    for (const p of parts) {
      out.set(p, o);
      o += p.length;
    }
    return out;
  }

  private async shortGet(path: string, headers: Record<string, string>) {
    const key = await this.key();
    let last: FerryError | undefined;
    for (const ep of this.shortEndpoints()) {
      try {
        const r = await new ShortLink(ep, key, this.timeoutMs, this.now).get(path, headers);
        this.shortGood = ep;
        return r;
      } catch (e) {
        const fe = asFerryError(e);
        if (fe.kind !== "network" && fe.kind !== "timeout") throw fe;
        last = fe;
      }
    }
    throw last!;
  }
}
