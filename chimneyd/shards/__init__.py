"""A daemon of several shards (design: scale, docs/architecture.md "Scale").

- `listen`: the RPC addresses held by the supervisor (SO_REUSEPORT for TCP, an inherited unix
  socket) and each shard's own listening socket;
- `control`: the control channel's frames and deadlines, sans-IO; `link`: its asyncio shell;
- `supervisor`: the parent process — starts the shards, routes what they ask of each other,
  restarts one that dies, passes signals on;
- `shard`: a shard's process entry; `cluster`: a shard's side of the control channel, the
  `api.ClusterAPI` its RPC methods use.
"""
