// FerryError: every failure the SDK reports.

import { ErrorCode, type Error as ErrorMsg } from "./gen/ferry_pb.js";

/** "invalid-argument": the caller passed something unusable (caught before any request). */
export type ErrorKind = "server" | "network" | "timeout" | "protocol" | "server-key" | "closed" | "invalid-argument";

export class FerryError extends Error {
  kind: ErrorKind;
  /** The server's ErrorCode, when kind == "server". */
  code?: number;
  /** Its name, e.g. "UNAUTHORIZED". */
  codeName?: string;
  retryAfterMs?: number;

  constructor(kind: ErrorKind, message: string, opts: { code?: number; retryAfterMs?: number; cause?: unknown } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "FerryError";
    this.kind = kind;
    if (opts.code !== undefined) {
      this.code = opts.code;
      this.codeName = ErrorCode[opts.code] ?? `CODE_${opts.code}`;
    }
    if (opts.retryAfterMs) this.retryAfterMs = opts.retryAfterMs;
  }

  /** The error a server's `Error` message stands for. */
  static fromServer(e: ErrorMsg): FerryError {
    const name = ErrorCode[e.code] ?? `CODE_${e.code}`;
    return new FerryError("server", e.message || name, { code: e.code, retryAfterMs: e.retryAfterMs });
  }

  /** Worth retrying: the network, a timeout, or UNAVAILABLE / INTERNAL / RATE_LIMITED. */
  get retryable(): boolean {
    if (this.kind === "network" || this.kind === "timeout") return true;
    return (
      this.kind === "server" &&
      (this.code === ErrorCode.UNAVAILABLE || this.code === ErrorCode.INTERNAL || this.code === ErrorCode.RATE_LIMITED)
    );
  }

  is(code: ErrorCode): boolean {
    return this.kind === "server" && this.code === code;
  }
}

export function asFerryError(e: unknown, kind: ErrorKind = "network"): FerryError {
  if (e instanceof FerryError) return e;
  if (e instanceof Error && (e.name === "TimeoutError" || e.name === "AbortError")) {
    return new FerryError("timeout", e.message, { cause: e });
  }
  return new FerryError(kind, e instanceof Error ? e.message : String(e), { cause: e });
}
