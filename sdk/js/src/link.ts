// One logged-in long link: a carrier (WebSocket or long-poll), the Noise IK handshake
// or a resumption carrying the LOGIN, then SEALED records carrying the frame stream.
// Requests are matched to answers by request id; pushes go to a callback.

import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { FerryError } from "./errors.js";
import * as cmd from "./cmd.js";
import { encodeFrame, FrameReader, type Frame } from "./frame.js";
import { ErrorCode, ErrorSchema, LoginReqSchema, LoginRespSchema, type LoginReq, type LoginResp } from "./gen/ferry_pb.js";
import { HelloHandshake, ResumeHandshake, type SecureChannel, type Ticket } from "./secure.js";
import type { Carrier } from "./transport.js";
import { decode } from "./short.js";

interface Pending {
  resolve: (f: Frame) => void;
  reject: (e: FerryError) => void;
  timer: ReturnType<typeof setTimeout>;
}

export interface LinkOpened {
  link: Link;
  login: LoginResp;
  /** The ticket to keep: a new one, the one used (resumed without a new one), or none. */
  ticket: Ticket | undefined;
}

export class Link {
  private nextId = 2;
  private pending = new Map<number, Pending>();
  private reader = new FrameReader();
  private closedReason: string | undefined;
  private closedWaiters: ((reason: string) => void)[] = [];
  /** Pushes (NOTIFY, GROUP_NOTIFY, TYPING_PUSH, KICK) and unmatched frames; kept until
   *  a handler is set (see [`Link.setOnPush`]), so none is lost before. */
  private pushHandler: ((f: Frame) => void) | undefined;
  private pushQueue: Frame[] = [];
  /** Any frame arrived (liveness). */
  lastHeard = Date.now();

  private constructor(readonly carrier: Carrier, private channel: SecureChannel) {}

  /** Opens a link: the handshake (a resumption when `ticket` is given) with the LOGIN. */
  static async open(
    carrier: Carrier,
    serverKey: Uint8Array,
    login: Omit<LoginReq, "$typeName" | "$unknown"> | LoginReq,
    ticket: Ticket | undefined,
    timeoutMs: number,
    nowMs: number = Date.now(),
  ): Promise<LinkOpened> {
    const loginFrame = encodeFrame(cmd.LOGIN, 1, toBinary(LoginReqSchema, create(LoginReqSchema, login)));
    const hs = ticket
      ? new ResumeHandshake(ticket, loginFrame, { sentMs: BigInt(Math.round(nowMs)) })
      : new HelloHandshake(serverKey, loginFrame);
    let answer: Frame;
    try {
      answer = await carrier.open(hs.frame, timeoutMs);
    } catch (e) {
      // Long-poll answers a HELLO that does not open with 400 BAD_REQUEST (a WebSocket
      // or TCP link with a plain ERROR frame, below): another server key.
      if (!ticket && e instanceof FerryError && e.code === ErrorCode.BAD_REQUEST) {
        throw new FerryError("server-key", `the server could not open the handshake: the pinned server key is not this server's (${e.message})`, { code: e.code });
      }
      throw e;
    }
    const want = ticket ? cmd.response(cmd.RESUME) : cmd.response(cmd.HELLO);
    if (answer.cmd === cmd.ERROR) {
      carrier.close();
      const e = FerryError.fromServer(decode(ErrorSchema, answer.body));
      if (!ticket && e.code === ErrorCode.BAD_REQUEST) {
        throw new FerryError("server-key", `the server could not open the handshake: the pinned server key is not this server's (${e.message})`, { code: e.code });
      }
      throw e;
    }
    if (answer.cmd !== want) {
      carrier.close();
      throw new FerryError("protocol", `handshake answered with command 0x${answer.cmd.toString(16)}`);
    }
    let r;
    try {
      r = hs.finish(answer.body);
    } catch (e) {
      carrier.close();
      throw new FerryError(ticket ? "protocol" : "server-key", `the handshake answer does not open: ${(e as Error).message}`);
    }
    const [first, ...rest] = r.frames;
    if (!first || first.reqId !== 1) {
      carrier.close();
      throw new FerryError("protocol", "no login answer in the handshake answer");
    }
    if (first.cmd === cmd.ERROR) {
      carrier.close();
      throw FerryError.fromServer(decode(ErrorSchema, first.body));
    }
    if (first.cmd !== cmd.response(cmd.LOGIN)) {
      carrier.close();
      throw new FerryError("protocol", `login answered with command 0x${first.cmd.toString(16)}`);
    }
    const loginResp = decode(LoginRespSchema, first.body);
    if (loginResp.protocol > 1) {
      carrier.close();
      throw new FerryError("protocol", `the server speaks protocol ${loginResp.protocol}; this SDK speaks 1`);
    }
    const link = new Link(carrier, r.channel);
    const early = rest;
    carrier.start(
      (frames) => link.onRecords(frames),
      (reason) => link.ended(reason),
    );
    if (early.length) queueMicrotask(() => early.forEach((f) => link.dispatch(f)));
    return { link, login: loginResp, ticket: r.ticket };
  }

  /** Sets the push handler and hands it the pushes that came before. */
  setOnPush(fn: (f: Frame) => void): void {
    this.pushHandler = fn;
    for (const f of this.pushQueue.splice(0)) fn(f);
  }

  private onPush(f: Frame): void {
    if (this.pushHandler) this.pushHandler(f);
    else this.pushQueue.push(f);
  }

  get transport() {
    return this.carrier.transport;
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** Resolves with the reason once the link has ended. */
  whenClosed(): Promise<string> {
    if (this.closedReason !== undefined) return Promise.resolve(this.closedReason);
    return new Promise((r) => this.closedWaiters.push(r));
  }

  private onRecords(records: Frame[]): void {
    this.lastHeard = Date.now();
    for (const rec of records) {
      if (this.closed) return;
      if (rec.cmd !== cmd.SEALED) {
        // A plain frame after the handshake: only an ERROR the server could not seal.
        if (rec.cmd === cmd.ERROR) {
          const e = fromBinary(ErrorSchema, rec.body);
          this.close(`server error: ${e.message}`);
        } else this.close("a frame that is not a SEALED record");
        return;
      }
      let frames: Frame[];
      try {
        frames = this.reader.push(this.channel.open(rec.body));
      } catch (e) {
        this.close(`a record does not open: ${(e as Error).message}`);
        return;
      }
      for (const f of frames) this.dispatch(f);
    }
  }

  private dispatch(f: Frame): void {
    if (f.reqId !== 0) {
      const p = this.pending.get(f.reqId);
      if (p) {
        this.pending.delete(f.reqId);
        clearTimeout(p.timer);
        if (f.cmd === cmd.ERROR) p.reject(FerryError.fromServer(decode(ErrorSchema, f.body)));
        else p.resolve(f);
        return;
      }
    }
    if (f.cmd === cmd.ERROR && f.reqId === 0) {
      // An ERROR for no request: the link ends after it.
      const e = decode(ErrorSchema, f.body);
      this.onPush(f);
      this.close(`server error: ${ErrorCode[e.code] ?? e.code} ${e.message}`);
      return;
    }
    this.onPush(f);
  }

  /** Sends a request and waits for its answer (an ERROR answer rejects). */
  request(c: number, body: Uint8Array, timeoutMs: number): Promise<Frame> {
    if (this.closed) return Promise.reject(new FerryError("closed", `the link is closed (${this.closedReason})`));
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 2 : this.nextId + 1;
    return new Promise<Frame>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new FerryError("timeout", `no answer to command 0x${c.toString(16)} within ${timeoutMs} ms`));
        // Nothing came back in time: the link is dead (docs/protocol.md §1.3).
        if (Date.now() - this.lastHeard >= timeoutMs) this.close("no answer");
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.carrier.send(this.channel.seal(encodeFrame(c, id, body)));
    });
  }

  /** Ends the link (the carrier is closed; requests in flight fail with kind "closed"). */
  close(reason = "closed by the client"): void {
    if (this.closed) return;
    this.carrier.close();
    this.ended(reason);
  }

  private ended(reason: string): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new FerryError("closed", `the link closed: ${reason}`));
    }
    this.pending.clear();
    for (const w of this.closedWaiters.splice(0)) w(reason);
  }
}
