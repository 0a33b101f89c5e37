// The short link: sealed protobuf POSTs (docs/protocol.md §3, §3.1), the unsealed media
// chunk, and GETs — over fetch, so the same code runs in browsers and node.

import { fromBinary, toBinary, type DescMessage, type MessageShape, type MessageInitShape, create } from "@bufbuild/protobuf";
import { fromUtf8, unhex } from "./bytes.js";
import { asFerryError, FerryError } from "./errors.js";
import { ErrorSchema } from "./gen/ferry_pb.js";
import { CONTENT_TYPE, openAnswer, sealRequest } from "./sealed.js";

/** "IP:PORT" or "http://IP:PORT" → "http://IP:PORT" (no trailing slash). */
export function baseUrl(endpoint: string): string {
  const e = endpoint.trim().replace(/\/+$/, "");
  return /^https?:\/\//.test(e) ? e : `http://${e}`;
}

function refusal(status: number, body: Uint8Array): FerryError {
  try {
    const e = fromBinary(ErrorSchema, body);
    if (e.code) return FerryError.fromServer(e);
  } catch {
    // not an Error body
  }
  return new FerryError("network", `HTTP ${status}`);
}

/** How far `sent_ms` may be from the answer's `Date` before a 400 is taken for a
 *  refusal of the device's clock (§3.1: the server allows 120 s; `Date` has seconds). */
const CLOCK_OFF_MS = 60_000;

export class ShortLink {
  readonly base: string;
  /** `now` is the clock sealed requests carry (unix ms): the device's, corrected by the
   *  client when the server said it is off. */
  constructor(
    endpoint: string,
    private serverKey: Uint8Array,
    private timeoutMs: number,
    private now: () => number = Date.now,
  ) {
    this.base = baseUrl(endpoint);
  }

  private async fetch(path: string, init: RequestInit, timeoutMs = this.timeoutMs): Promise<Response> {
    try {
      return await fetch(`${this.base}/v1/${path}`, { ...init, signal: AbortSignal.timeout(timeoutMs) });
    } catch (e) {
      throw asFerryError(e);
    }
  }

  private async bytes(r: Response): Promise<Uint8Array> {
    try {
      return new Uint8Array(await r.arrayBuffer());
    } catch (e) {
      throw asFerryError(e);
    }
  }

  /** POSTs `body` sealed (the token inside it) to `/v1/{path}`; the opened answer body. */
  async postSealed(path: string, token: string, body: Uint8Array): Promise<Uint8Array> {
    const sentMs = Math.round(this.now());
    const { wire, reply } = sealRequest(this.serverKey, token, body, BigInt(sentMs));
    const r = await this.fetch(path, {
      method: "POST",
      headers: { "Content-Type": CONTENT_TYPE },
      body: wire as BodyInit,
    });
    const raw = await this.bytes(r);
    const sealed = (r.headers.get("content-type") ?? "").startsWith(CONTENT_TYPE);
    if (!sealed) {
      if (r.ok) throw new FerryError("protocol", "the server answered a sealed request in plain");
      const e = refusal(r.status, raw);
      const date = Date.parse(r.headers.get("date") ?? "");
      if (e.codeName === "BAD_REQUEST" && !Number.isNaN(date)) {
        if (Math.abs(date - sentMs) > CLOCK_OFF_MS) {
          // Refused for the clock: sent_ms far off the server's, which the answer's Date
          // gives (to the second; the server allows 120 s).
          (e as FerryError & { serverDateMs?: number }).serverDateMs = date;
        } else {
          // Within the clock window a well-formed request with fresh keys is refused in
          // plain only when it does not open: sealed to another key (§3.1).
          throw new FerryError("server-key", `${e.message} (the pinned server key is not this server's)`, { code: e.code });
        }
      }
      throw e;
    }
    let opened: Uint8Array;
    try {
      opened = openAnswer(reply, raw);
    } catch (e) {
      throw new FerryError("protocol", `sealed answer does not open: ${(e as Error).message}`);
    }
    if (!r.ok) throw refusal(r.status, opened);
    return opened;
  }

  /** A sealed protobuf call. */
  async call<Req extends DescMessage, Resp extends DescMessage>(
    path: string,
    token: string,
    reqSchema: Req,
    req: MessageInitShape<Req>,
    respSchema: Resp,
  ): Promise<MessageShape<Resp>> {
    const body = await this.postSealed(path, token, toBinary(reqSchema, create(reqSchema, req)));
    return decode(respSchema, body);
  }

  /** A plain POST without a token (the media chunk under its upload key). */
  async postPlain<Resp extends DescMessage>(path: string, body: Uint8Array, respSchema: Resp): Promise<MessageShape<Resp>> {
    const r = await this.fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/x-protobuf" },
      body: body as BodyInit,
    });
    const raw = await this.bytes(r);
    if (!r.ok) throw refusal(r.status, raw);
    return decode(respSchema, raw);
  }

  /** A GET with headers: status, headers and body; a non-2xx answer throws its Error. */
  async get(path: string, headers: Record<string, string>): Promise<{ status: number; headers: Headers; body: Uint8Array }> {
    const r = await this.fetch(path, { method: "GET", headers });
    const body = await this.bytes(r);
    if (!r.ok) throw refusal(r.status, body);
    return { status: r.status, headers: r.headers, body };
  }

  /** GET /v1/server-key: the server's static key (trust on first use). */
  static async serverKey(endpoint: string, timeoutMs: number): Promise<Uint8Array> {
    let r: Response;
    try {
      r = await fetch(`${baseUrl(endpoint)}/v1/server-key`, { signal: AbortSignal.timeout(timeoutMs) });
    } catch (e) {
      throw asFerryError(e);
    }
    if (!r.ok) throw new FerryError("network", `server-key: HTTP ${r.status}`);
    const text = fromUtf8.decode(new Uint8Array(await r.arrayBuffer())).trim();
    if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new FerryError("protocol", "server-key: not 64 hex digits");
    return unhex(text);
  }
}

export function decode<S extends DescMessage>(schema: S, body: Uint8Array): MessageShape<S> {
  try {
    return fromBinary(schema, body);
  } catch (e) {
    throw new FerryError("protocol", `undecodable ${schema.typeName}: ${(e as Error).message}`);
  }
}
