// The long link's carriers: WebSocket (docs/protocol.md §7.1a: one binary message = one
// frame) and HTTP long-poll (§7.1). Both carry frames; the encryption is above them.

import { fromBinary } from "@bufbuild/protobuf";
import { concat } from "./bytes.js";
import { asFerryError, FerryError } from "./errors.js";
import { FrameReader, parseFrames, type Frame } from "./frame.js";
import { ErrorSchema } from "./gen/ferry_pb.js";
import { baseUrl } from "./short.js";

export type Transport = "ws" | "lp";

/** A carrier of frames to one endpoint. */
export interface Carrier {
  readonly transport: Transport;
  /** Sends the first frame (HELLO or RESUME) and waits for the one frame answering it. */
  open(first: Uint8Array, timeoutMs: number): Promise<Frame>;
  /** Starts delivering frames (after the answer to the first). */
  start(onFrames: (f: Frame[]) => void, onClose: (reason: string) => void): void;
  /** Sends whole frames, in order. */
  send(frames: Uint8Array[]): void;
  close(): void;
}

// ---------------------------------------------------------------------------- WebSocket

interface WsLike {
  binaryType: string;
  readyState: number;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
  send(data: Uint8Array): void;
  close(code?: number): void;
}
export type WsCtor = new (url: string, protocols?: string | string[]) => WsLike;

function wsBytes(data: unknown): Uint8Array | undefined {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

export class WsCarrier implements Carrier {
  readonly transport = "ws" as const;
  private ws: WsLike | undefined;
  private onFrames: ((f: Frame[]) => void) | undefined;
  private onClose: ((reason: string) => void) | undefined;
  private early: Frame[] = [];
  private closed = false;

  constructor(private endpoint: string, private Ctor: WsCtor) {}

  open(first: Uint8Array, timeoutMs: number): Promise<Frame> {
    const url = baseUrl(this.endpoint).replace(/^http/, "ws") + "/v1/ws";
    return new Promise<Frame>((resolve, reject) => {
      let answered = false;
      const fail = (e: FerryError) => {
        if (answered) return;
        answered = true;
        clearTimeout(timer);
        this.close();
        reject(e);
      };
      const timer = setTimeout(() => fail(new FerryError("timeout", `WebSocket ${url}: no answer`)), timeoutMs);
      let ws: WsLike;
      try {
        ws = new this.Ctor(url);
      } catch (e) {
        return fail(asFerryError(e));
      }
      this.ws = ws;
      ws.binaryType = "arraybuffer";
      ws.onopen = () => ws.send(first);
      ws.onerror = () => fail(new FerryError("network", `WebSocket ${url} failed`));
      ws.onclose = (ev) => {
        fail(new FerryError("network", `WebSocket ${url} closed (${ev.code ?? "?"})`));
        this.ended(`closed ${ev.code ?? ""} ${ev.reason ?? ""}`.trim());
      };
      ws.onmessage = (ev) => {
        const b = wsBytes(ev.data);
        let frames: Frame[];
        try {
          if (!b) throw new Error("a text message");
          frames = parseFrames(b);
          if (frames.length !== 1) throw new Error("a message that is not one frame");
        } catch (e) {
          fail(new FerryError("protocol", `WebSocket: ${(e as Error).message}`));
          this.ended("protocol");
          return;
        }
        if (!answered) {
          answered = true;
          clearTimeout(timer);
          resolve(frames[0]);
        } else if (this.onFrames) {
          this.onFrames(frames);
        } else {
          this.early.push(...frames);
        }
      };
    });
  }

  private ended(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.onClose?.(reason);
  }

  start(onFrames: (f: Frame[]) => void, onClose: (reason: string) => void): void {
    this.onFrames = onFrames;
    this.onClose = onClose;
    if (this.early.length) onFrames(this.early.splice(0));
    if (this.closed) onClose("closed");
  }

  send(frames: Uint8Array[]): void {
    if (!this.ws || this.ws.readyState !== 1) return;
    for (const f of frames) this.ws.send(f);
  }

  close(): void {
    const ws = this.ws;
    if (ws && (ws.readyState === 0 || ws.readyState === 1)) {
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.ended("closed by the client");
  }
}

// ---------------------------------------------------------------------------- long-poll

export class LpCarrier implements Carrier {
  readonly transport = "lp" as const;
  private base: string;
  private sid = "";
  private holdMs = 25000;
  private closed = false;
  private sendChain: Promise<void> = Promise.resolve();
  private poll: AbortController | undefined;
  private onClose: ((reason: string) => void) | undefined;
  private reader = new FrameReader();

  constructor(endpoint: string, private timeoutMs: number) {
    this.base = baseUrl(endpoint);
  }

  private async post(path: string, body: Uint8Array | undefined, signal: AbortSignal): Promise<Response> {
    try {
      return await fetch(`${this.base}/v1/${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/x-ferry-frames" },
        body: (body ?? new Uint8Array(0)) as BodyInit,
        signal,
      });
    } catch (e) {
      throw asFerryError(e);
    }
  }

  async open(first: Uint8Array, timeoutMs: number): Promise<Frame> {
    const r = await this.post("lp/open", first, AbortSignal.timeout(timeoutMs));
    let body: Uint8Array;
    try {
      body = new Uint8Array(await r.arrayBuffer());
    } catch (e) {
      throw asFerryError(e);
    }
    if (r.status !== 200) {
      try {
        const e = fromBinary(ErrorSchema, body);
        if (e.code) throw FerryError.fromServer(e);
      } catch (e) {
        if (e instanceof FerryError) throw e;
      }
      throw new FerryError("network", `lp/open: HTTP ${r.status}`);
    }
    this.sid = r.headers.get("ferry-session") ?? "";
    const hold = Number(r.headers.get("ferry-poll-hold-ms"));
    if (hold > 0) this.holdMs = hold;
    if (!this.sid) throw new FerryError("protocol", "lp/open: no Ferry-Session header");
    const frames = parseFrames(body);
    if (frames.length !== 1) throw new FerryError("protocol", "lp/open: not one frame");
    return frames[0];
  }

  start(onFrames: (f: Frame[]) => void, onClose: (reason: string) => void): void {
    this.onClose = onClose;
    if (this.closed) {
      onClose("closed");
      return;
    }
    void this.pollLoop(onFrames);
  }

  private ended(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.poll?.abort();
    this.onClose?.(reason);
  }

  private async pollLoop(onFrames: (f: Frame[]) => void): Promise<void> {
    while (!this.closed) {
      this.poll = new AbortController();
      const signal = AbortSignal.any([this.poll.signal, AbortSignal.timeout(this.holdMs + this.timeoutMs)]);
      let r: Response;
      let body: Uint8Array;
      try {
        r = await this.post(`lp/poll?sid=${this.sid}`, undefined, signal);
        body = new Uint8Array(await r.arrayBuffer());
      } catch (e) {
        this.ended(`poll failed: ${(e as Error).message}`);
        return;
      }
      if (this.closed) return;
      if (r.status === 200) {
        let frames: Frame[];
        try {
          frames = this.reader.push(body);
        } catch (e) {
          this.ended(`poll: ${(e as Error).message}`);
          return;
        }
        if (frames.length) onFrames(frames);
      } else {
        this.ended(`poll: HTTP ${r.status}`);
        return;
      }
    }
  }

  send(frames: Uint8Array[]): void {
    if (this.closed || !frames.length) return;
    const body = concat(...frames);
    // One send at a time: the records must arrive in order.
    this.sendChain = this.sendChain.then(async () => {
      if (this.closed) return;
      try {
        const r = await this.post(`lp/send?sid=${this.sid}`, body, AbortSignal.timeout(this.timeoutMs));
        await r.arrayBuffer();
        if (r.status !== 204 && r.status !== 200) this.ended(`send: HTTP ${r.status}`);
      } catch (e) {
        this.ended(`send failed: ${(e as Error).message}`);
      }
    });
  }

  close(): void {
    if (this.closed) return;
    const sid = this.sid;
    this.ended("closed by the client");
    if (sid) {
      void this.post(`lp/close?sid=${sid}`, undefined, AbortSignal.timeout(this.timeoutMs))
        .then((r) => r.arrayBuffer())
        .catch(() => undefined);
    }
  }
}
