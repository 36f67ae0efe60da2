// A chimneyd client in Node.js: plain msgpack-RPC over TCP with @msgpack/msgpack.
//
//   cd docs/examples/node && npm ci && node client.mjs 127.0.0.1:7411
//
// It starts its own loopback echo server, has the daemon open an offloaded connection to it,
// sends bytes and reads the echo back, prints the NDIS hops of the send, shows an error answer,
// and closes. Exit status 0 when the echo matched. The address may also come from CHIMNEY_RPC,
// and a token from CHIMNEY_TOKEN.

import net from "node:net";
import { encode, decodeMultiStream } from "@msgpack/msgpack";

const REQUEST = 0;
const RESPONSE = 1;
const NOTIFICATION = 2;

class RpcError extends Error {
  constructor([code, message]) {
    super(message); // "NOT_FOUND: no connection 999"
    this.code = code; // 3 (docs/rpc.md, "Errors")
  }
}

class RpcClient {
  constructor(socket) {
    this.socket = socket;
    this.nextId = 1;
    this.pending = new Map(); // msgid -> {resolve, reject}: answers may come in any order
    this.onNotification = () => {};
    this.done = this.#read();
  }

  static connect(host, port) {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ host, port }, () => {
        socket.off("error", reject);
        resolve(new RpcClient(socket));
      });
      socket.once("error", reject);
    });
  }

  // The stream is a sequence of msgpack objects with no length prefix.
  async #read() {
    try {
      for await (const message of decodeMultiStream(this.socket)) {
        if (message[0] === RESPONSE) {
          const [, msgid, error, result] = message;
          const waiter = this.pending.get(msgid);
          this.pending.delete(msgid);
          if (waiter) error ? waiter.reject(new RpcError(error)) : waiter.resolve(result);
        } else if (message[0] === NOTIFICATION) {
          this.onNotification(message[1], message[2]);
        }
      }
    } catch (err) {
      if (err.code !== "ECONNRESET") throw err;
    }
    for (const waiter of this.pending.values()) waiter.reject(new Error("connection closed"));
  }

  // Strings go out as msgpack str, Uint8Array/Buffer as bin.
  call(method, ...params) {
    const msgid = this.nextId++;
    const answer = new Promise((resolve, reject) => this.pending.set(msgid, { resolve, reject }));
    this.socket.write(encode([REQUEST, msgid, method, params]));
    return answer;
  }

  async close() {
    this.socket.end();
    await this.done;
  }
}

function echoServer() {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => socket.pipe(socket));
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

async function main() {
  const address = process.argv[2] || process.env.CHIMNEY_RPC || "127.0.0.1:7411";
  const [host, port] = [address.slice(0, address.lastIndexOf(":")), Number(address.split(":").pop())];
  const peer = await echoServer();
  const rpc = await RpcClient.connect(host, port);
  const events = [];
  rpc.onNotification = (method, [conn, event]) => method === "tcp.event" && events.push(event);
  try {
    if (process.env.CHIMNEY_TOKEN) await rpc.call("auth", process.env.CHIMNEY_TOKEN);
    console.log("ping:", await rpc.call("ping"));
    const info = await rpc.call("stack.info");
    console.log(`chimneyd ${info.version}, contract ${info.contract}:`,
      info.layers.map((layer) => layer.name).join(" → "));

    const conn = await rpc.call("tcp.connect", "127.0.0.1", peer.address().port);
    await rpc.call("events.subscribe", conn);
    const state = await rpc.call("tcp.info", conn);
    console.log(`conn ${conn}: ${state.state} via ${state.path.join(" → ")}`);

    const payload = Buffer.from("hello from node");
    const acked = await rpc.call("tcp.send", conn, payload); // once the peer acknowledged it
    let echoed = Buffer.alloc(0);
    while (echoed.length < payload.length) {
      const chunk = await rpc.call("tcp.recv", conn, payload.length - echoed.length, 5000);
      echoed = Buffer.concat([echoed, chunk]);
    }
    console.log(`sent ${acked} bytes, echoed back: ${echoed.toString()}`);

    const trace = await rpc.call("trace.get", conn);
    const nbl = trace.find((hop) => hop.call === "NdisOffloadTcpSend").nbl;
    for (const hop of trace.filter((h) => h.nbl === nbl)) {
      const ids = ["handle", "context"].filter((k) => hop[k] != null).map((k) => `${k} ${hop[k]}`);
      const status = hop.status ? [hop.status] : [];
      console.log(`  ${hop.layer.padEnd(6)} ${hop.call.padEnd(32)} nbl ${nbl}`, ...ids, ...status);
    }

    try {
      await rpc.call("tcp.recv", 999999, 10);
    } catch (err) {
      console.log(`error answer: code ${err.code}, ${err.message}`);
    }

    await rpc.call("tcp.close", conn);
    await new Promise((resolve) => setTimeout(resolve, 100)); // let the last events arrive
    console.log("events:", events.join(", "));
    if (!echoed.equals(payload)) {
      console.error(`MISMATCH: sent ${payload}, received ${echoed}`);
      process.exitCode = 1;
    }
  } finally {
    await rpc.close();
    peer.close();
  }
}

await main();
