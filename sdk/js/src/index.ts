// @ferry/sdk — Ferry's client SDK for browsers and node (docs/protocol.md in TypeScript
// on the noble crypto libraries). The public API is sdk/js/API.md.
export { FerryClient, type ClientOptions, type ConnState, type ConvChange, type Conversation, type Events, type SearchQuery, type SendOptions, type SendProgress, type Transport } from "./client.js";
export { FerryError, type ErrorKind } from "./errors.js";
export { MemoryStore, IndexedDbStore, type StateStore } from "./store.js";
export * from "./gen/ferry_pb.js";
