// An HTTP proxy in front of a test server, as a browser's network may have one: plain
// HTTP requests (sealed short-link calls, long-poll) are forwarded; WebSocket upgrades
// are forwarded, or refused while `blockUpgrades` is set (a proxy that strips
// `Upgrade`), and `cutUpgraded()` drops the upgraded connections it carries.
import { createServer, request } from "node:http";
import { connect } from "node:net";

export async function startProxy() {
  const upgraded = new Set();
  const proxy = { target: undefined, blockUpgrades: false, upgrades: 0, refused: 0 };
  const server = createServer((req, res) => {
    const [host, port] = proxy.target.split(":");
    const up = request({ host, port: Number(port), method: req.method, path: req.url, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on("error", () => {
      if (!res.headersSent) res.writeHead(502);
      res.end();
    });
    res.on("close", () => up.destroy());
    req.pipe(up);
  });
  server.on("upgrade", (req, socket, head) => {
    if (proxy.blockUpgrades) {
      proxy.refused++;
      socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
      return;
    }
    proxy.upgrades++;
    const [host, port] = proxy.target.split(":");
    const up = connect(Number(port), host, () => {
      let lines = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) lines += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(lines + "\r\n");
      if (head?.length) up.write(head);
      socket.pipe(up);
      up.pipe(socket);
    });
    const pair = { socket, up };
    upgraded.add(pair);
    const drop = () => {
      upgraded.delete(pair);
      socket.destroy();
      up.destroy();
    };
    socket.on("error", drop);
    socket.on("close", drop);
    up.on("error", drop);
    up.on("close", drop);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  proxy.endpoint = `127.0.0.1:${server.address().port}`;
  proxy.cutUpgraded = () => {
    for (const p of [...upgraded]) {
      p.socket.destroy();
      p.up.destroy();
    }
    upgraded.clear();
  };
  proxy.close = () =>
    new Promise((r) => {
      proxy.cutUpgraded();
      server.closeAllConnections?.();
      server.close(() => r());
    });
  return proxy;
}
