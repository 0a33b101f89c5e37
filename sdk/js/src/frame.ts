// The frame codec of the long link (docs/protocol.md §1.1): an 8-byte header — body
// length (u24 BE), command, request id (u32 BE) — and the body.

import { concat } from "./bytes.js";

/** The largest frame body a server may send (1 MiB). */
export const MAX_BODY = 0x100000;

export interface Frame {
  cmd: number;
  reqId: number;
  body: Uint8Array;
}

export function encodeFrame(cmd: number, reqId: number, body: Uint8Array = new Uint8Array(0)): Uint8Array {
  if (body.length > MAX_BODY) throw new RangeError(`frame body of ${body.length} bytes over 1 MiB`);
  const out = new Uint8Array(8 + body.length);
  out[0] = (body.length >>> 16) & 0xff;
  out[1] = (body.length >>> 8) & 0xff;
  out[2] = body.length & 0xff;
  out[3] = cmd;
  new DataView(out.buffer).setUint32(4, reqId >>> 0, false);
  out.set(body, 8);
  return out;
}

/** Reads whole frames from a byte stream that may split them anywhere. */
export class FrameReader {
  private buf: Uint8Array = new Uint8Array(0);

  push(bytes: Uint8Array): Frame[] {
    this.buf = this.buf.length ? concat(this.buf, bytes) : bytes.slice();
    const out: Frame[] = [];
    let off = 0;
    while (this.buf.length - off >= 8) {
      const len = (this.buf[off] << 16) | (this.buf[off + 1] << 8) | this.buf[off + 2];
      if (len > MAX_BODY) throw new RangeError(`frame announces ${len} bytes, over 1 MiB`);
      if (this.buf.length - off < 8 + len) break;
      const dv = new DataView(this.buf.buffer, this.buf.byteOffset + off);
      out.push({
        cmd: this.buf[off + 3],
        reqId: dv.getUint32(4, false),
        body: this.buf.slice(off + 8, off + 8 + len),
      });
      off += 8 + len;
    }
    this.buf = this.buf.slice(off);
    return out;
  }

  /** Bytes of an unfinished frame are waiting. */
  get pending(): number {
    return this.buf.length;
  }
}

/** Parses bytes that must be whole frames and nothing else. */
export function parseFrames(bytes: Uint8Array): Frame[] {
  const r = new FrameReader();
  const frames = r.push(bytes);
  if (r.pending) throw new RangeError("bytes after the last whole frame");
  return frames;
}
