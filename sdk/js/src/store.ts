// Where the device's state lives: token, device id, synckey, group cursors, server key,
// resumption ticket, last good endpoint. Values are JSON-able.

export interface StateStore {
  get<T>(key: string): Promise<T | undefined>;
  set(key: string, value: unknown): Promise<void>;
  delete(key: string): Promise<void>;
}

/** In memory (node's default): gone with the process. */
export class MemoryStore implements StateStore {
  private m = new Map<string, string>();
  async get<T>(key: string): Promise<T | undefined> {
    const v = this.m.get(key);
    return v === undefined ? undefined : (JSON.parse(v) as T);
  }
  async set(key: string, value: unknown): Promise<void> {
    this.m.set(key, JSON.stringify(value));
  }
  async delete(key: string): Promise<void> {
    this.m.delete(key);
  }
}

/** In the browser's IndexedDB (a browser's default): one object store "state". */
export class IndexedDbStore implements StateStore {
  private db: Promise<IDBDatabase> | undefined;
  constructor(private dbName: string) {}

  private open(): Promise<IDBDatabase> {
    if (!this.db) {
      this.db = new Promise((resolve, reject) => {
        const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
        if (!idb) return reject(new Error("IndexedDB is not available here"));
        const req = idb.open(this.dbName, 1);
        req.onupgradeneeded = () => req.result.createObjectStore("state");
        req.onsuccess = () => resolve(req.result);
        req.onerror = () => reject(req.error);
      });
    }
    return this.db;
  }

  private async run<T>(mode: IDBTransactionMode, f: (s: IDBObjectStore) => IDBRequest): Promise<T> {
    const db = await this.open();
    return new Promise<T>((resolve, reject) => {
      const tx = db.transaction("state", mode);
      const req = f(tx.objectStore("state"));
      tx.oncomplete = () => resolve(req.result as T);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async get<T>(key: string): Promise<T | undefined> {
    const v = await this.run<string | undefined>("readonly", (s) => s.get(key));
    return v === undefined ? undefined : (JSON.parse(v) as T);
  }
  async set(key: string, value: unknown): Promise<void> {
    await this.run("readwrite", (s) => s.put(JSON.stringify(value), key));
  }
  async delete(key: string): Promise<void> {
    await this.run("readwrite", (s) => s.delete(key));
  }
}
