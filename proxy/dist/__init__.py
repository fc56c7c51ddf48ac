"""A cluster whose nodes run on several machines, over NATS JetStream (docs/distributed.md).

Each node is a directory of its own (its SQLite file, a cluster.toml with only itself, and
distributed.toml naming the NATS servers and the cluster), served by `replproxy serve`: the leader's
relay publishes its committed log entries to the cluster's stream; followers apply them from the
stream; a lease in a key-value bucket says who leads.
"""
