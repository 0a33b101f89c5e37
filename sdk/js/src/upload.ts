// A media chunk encrypted under its upload's key (docs/protocol.md, Media, "The upload
// key"): ChaCha20-Poly1305, nonce = 4 zero bytes ‖ offset (u64 BE), aad = media_id
// (ASCII) ‖ offset (u64 BE).

import { concat, u64be, utf8 } from "./bytes.js";
import { aeadSeal } from "./noise.js";

export function chunkNonce(offset: bigint): Uint8Array {
  return concat(new Uint8Array(4), u64be(offset));
}

export function chunkAad(mediaId: string, offset: bigint): Uint8Array {
  return concat(utf8.encode(mediaId), u64be(offset));
}

export function sealChunk(key: Uint8Array, mediaId: string, offset: bigint, chunk: Uint8Array): Uint8Array {
  return aeadSeal(key, chunkNonce(offset), chunkAad(mediaId, offset), chunk);
}
