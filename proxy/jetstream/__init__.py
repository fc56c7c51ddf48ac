"""NATS JetStream as replproxy's transport between machines (docs/distributed.md).

`bridge` runs a NATS connection on its own asyncio thread for the synchronous code above it;
`names` maps a cluster to its stream, buckets and subjects; `codec` turns log entries into stream
messages and back; `stream` publishes and reads them; `kv` holds positions, settings and the lease.
Everything here imports nats lazily: the embedded default never loads it.
"""
