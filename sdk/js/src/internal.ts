// The SDK's protocol pieces, for its tests and for tools (not the app's API: see index.ts).
export { hex, unhex, concat } from "./bytes.js";
export { encodeFrame, parseFrames, FrameReader, type Frame } from "./frame.js";
export * as noise from "./noise.js";
export * as sealed from "./sealed.js";
export * as secure from "./secure.js";
export * as upload from "./upload.js";
export * as cmd from "./cmd.js";
export * from "./gen/ferry_pb.js";
