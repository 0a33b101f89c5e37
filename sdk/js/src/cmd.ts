// Command numbers of the long link and short-link paths (docs/protocol.md §1.2).

export const LOGIN = 0x01;
export const HEARTBEAT = 0x02;
export const SEND = 0x03;
export const SYNC = 0x04;
export const GROUP_SYNC = 0x05;
export const RECALL = 0x06;
export const READ = 0x07;
export const TYPING = 0x08;
export const HELLO = 0x09;
export const SEALED = 0x0a;
export const RESUME = 0x0b;
export const TICKET = 0x0c;
export const EDIT = 0x0d;
export const REACT = 0x0e;
export const HIDE = 0x0f;
export const REGISTER = 0x10;
export const AUTH = 0x11;
export const LOGOUT = 0x12;
export const FIND_USER = 0x13;
export const FRIEND_REQUEST = 0x14;
export const FRIEND_ACCEPT = 0x15;
export const FRIEND_DECLINE = 0x16;
export const FRIEND_REMOVE = 0x17;
export const FRIEND_BLOCK = 0x18;
export const FRIEND_UNBLOCK = 0x19;
export const FRIEND_LIST = 0x1a;
export const GROUP_CREATE = 0x23;
export const GROUP_ADD = 0x24;
export const GROUP_REMOVE = 0x25;
export const GROUP_LEAVE = 0x26;
export const GROUP_INFO = 0x27;
export const GROUP_LIST = 0x28;
export const GROUP_READS = 0x2b;
export const MEDIA_CREATE = 0x2c;
export const MEDIA_CHUNK = 0x2d;
export const MEDIA_STATUS = 0x2e;
export const MEDIA_FINISH = 0x2f;
export const REACTIONS = 0x32;
export const PIN = 0x33;
export const PINS = 0x34;
export const SEARCH = 0x35;
export const ENDPOINTS = 0x36;
export const CONV = 0x3e;
export const NOTIFY = 0x40;
export const KICK = 0x41;
export const GROUP_NOTIFY = 0x42;
export const TYPING_PUSH = 0x43;
export const ERROR = 0x7f;

export function response(cmd: number): number {
  return cmd | 0x80;
}

/** Short-link paths (under /v1/) of the commands this SDK sends. */
export const PATHS: Record<number, string> = {
  [SYNC]: "newsync",
  [GROUP_SYNC]: "group/sync",
  [RECALL]: "recall",
  [READ]: "read",
  [EDIT]: "edit",
  [REACT]: "react",
  [HIDE]: "hide",
  [REGISTER]: "register",
  [AUTH]: "auth",
  [LOGOUT]: "logout",
  [FIND_USER]: "user/find",
  [FRIEND_REQUEST]: "friends/request",
  [FRIEND_ACCEPT]: "friends/accept",
  [FRIEND_DECLINE]: "friends/decline",
  [FRIEND_REMOVE]: "friends/remove",
  [FRIEND_BLOCK]: "friends/block",
  [FRIEND_UNBLOCK]: "friends/unblock",
  [FRIEND_LIST]: "friends/list",
  [GROUP_CREATE]: "group/create",
  [GROUP_ADD]: "group/add",
  [GROUP_REMOVE]: "group/remove",
  [GROUP_LEAVE]: "group/leave",
  [GROUP_INFO]: "group/info",
  [GROUP_LIST]: "group/list",
  [GROUP_READS]: "group/reads",
  [MEDIA_CREATE]: "media/create",
  [MEDIA_CHUNK]: "media/chunk",
  [MEDIA_STATUS]: "media/status",
  [MEDIA_FINISH]: "media/finish",
  [REACTIONS]: "reactions",
  [PIN]: "pin",
  [PINS]: "pins",
  [SEARCH]: "search",
  [ENDPOINTS]: "endpoints",
  [CONV]: "conv",
};

/** Commands a logged-in long link may carry (the table's "long link: yes"). */
export const ON_LINK = new Set<number>([
  SYNC, GROUP_SYNC, RECALL, READ, TYPING, FIND_USER, FRIEND_REQUEST, FRIEND_ACCEPT,
  FRIEND_DECLINE, FRIEND_REMOVE, FRIEND_BLOCK, FRIEND_UNBLOCK, FRIEND_LIST, GROUP_CREATE,
  GROUP_ADD, GROUP_REMOVE, GROUP_LEAVE, GROUP_INFO, GROUP_LIST, GROUP_READS, MEDIA_CREATE,
  MEDIA_CHUNK, MEDIA_STATUS, MEDIA_FINISH, ENDPOINTS, EDIT, REACT, HIDE, REACTIONS, PIN, PINS,
  SEARCH, CONV,
]);

/** Requests that may simply be sent again after a lost link (the table's "idempotent";
 *  SEND has its own retry with its client_msg_id). */
export const IDEMPOTENT = new Set<number>([
  SYNC, GROUP_SYNC, FIND_USER, FRIEND_LIST, GROUP_INFO, GROUP_LIST, GROUP_READS, MEDIA_STATUS,
  ENDPOINTS, EDIT, REACT, HIDE, REACTIONS, PIN, PINS, SEARCH,
]);
