"""The store layer: one node file and what moves entries into it. It knows no cluster.

- config.py: the cluster.toml model (read, written atomically, locked between processes);
- node.py: the internal tables, every meta key, opening a node, its state and fences;
- log.py: log entries, appending, reading, positions;
- source.py: where followers read entries from (`LogSource`);
- applier.py: applying entries to one follower, exactly once;
- replicator.py: the background thread moving every follower of a process;
- decode.py: entries decoded for people and machines.
"""
