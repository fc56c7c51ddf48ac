"""Every PRAGMA and what it does to replication: a declared table, one rule per pragma.

A PRAGMA reports something (QUERY), changes a setting of the session's own connection (SETTING) or
of its open transaction (TRANSACTION), writes a header value the followers must share (HEADER),
maintains the leader's own file (LEADER_FILE), or would make the leader do something its followers
never do. Those are refused, or refused for the values that would, with what to do instead.

The question each rule answers: does this PRAGMA change what a later statement does on the leader
only? A setting that changes what a write does there (foreign_keys, recursive_triggers...) is safe
only because the log carries its effect: row images in the row, trigger and mixed formats, the
setting itself with each statement in the statement format. A setting no format carries
(legacy_alter_table) or that a format cannot carry (ignore_check_constraints with row images) is
refused. A setting that changes what a read returns (case_sensitive_like, reverse_unordered_selects)
is applied to the session's follower connections too, so a read answers the same wherever it runs.

tests/test_hardening_driver.py checks that every PRAGMA this SQLite knows has a rule here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apsw

QUERY = "query"  # reports; runs where reads run (the leader, a pinned node, the transaction's node)
SETTING = "setting"  # the session's connection: set on the leader and on the session's follower reads
TRANSACTION = "transaction"  # the open transaction: runs inside the leader's write transaction
HEADER = "header"  # a database header value followers must share: a logged write
LEADER_FILE = "leader-file"  # the leader's own file (its layout, its WAL): never on a follower
REFUSED = "refused"

# A check of a PRAGMA's value: the reason it is refused, or None. Arguments: the value as SQLite
# reports it (None for a bare query), the cluster's log format.
Check = Callable[[str | None, Any], str | None]


@dataclass(frozen=True)
class Rule:
    kind: str
    check: Check | None = None
    # SETTING only: also set on the session's follower read connections.
    mirror: bool = True
    # LEADER_FILE only: without a value it only reports (page_size), rather than acts (wal_checkpoint).
    bare_is_query: bool = False

    def acts(self, value: str | None) -> bool:
        """Whether running it with this value changes the file it runs on (LEADER_FILE)."""
        return self.kind == LEADER_FILE and (value is not None or not self.bare_is_query)


def _off(value: str) -> bool:
    """True when SQLite reads `value` as false (sqlite3GetBoolean): anything else may turn it on."""
    text = value.strip().lower()
    if text in ("off", "no", "false"):
        return True
    try:
        return int(text, 0) == 0
    except ValueError:
        return False


def _only_off(why: str) -> Check:
    def check(value: str | None, fmt: Any) -> str | None:
        return why if value is not None and not _off(value) else None
    return check


def _never_set(why: str) -> Check:
    def check(value: str | None, fmt: Any) -> str | None:
        return why if value is not None else None
    return check


def _always(why: str) -> Check:
    def check(value: str | None, fmt: Any) -> str | None:
        return why
    return check


def _check_constraints(value: str | None, fmt: Any) -> str | None:
    if value is None or _off(value):
        return None
    if getattr(fmt, "name", None) == "statement" and not fmt.options.get("no_rewrite"):
        return None  # the statement format carries it with each statement it affects
    return (f"PRAGMA ignore_check_constraints=ON lets the leader store rows that break a CHECK "
            f"constraint; the {getattr(fmt, 'name', '?')} format replays rows on followers that "
            f"still check them, so every follower would stop. Only the statement format carries "
            f"this setting; fix the data or the constraint instead")


def _journal_mode(value: str | None, fmt: Any) -> str | None:
    if value is None or value.strip().lower() == "wal":
        return None
    return ("every node stays in WAL mode: the replicator and other connections read the leader "
            "while it writes, so PRAGMA journal_mode cannot be changed through the proxy (it would "
            "wait for a lock it cannot get: 'database is locked'); only a query of it is allowed")


def _locking_mode(value: str | None, fmt: Any) -> str | None:
    if value is None or value.strip().lower() != "exclusive":
        return None
    return ("PRAGMA locking_mode=EXCLUSIVE would keep the leader file locked by this connection: the "
            "replicator and every other connection would wait, then fail; leave it NORMAL")


_LEGACY_ALTER = ("PRAGMA legacy_alter_table=ON changes what ALTER TABLE ... RENAME does on the leader "
                 "alone: followers replay the same ALTER TABLE without it and their schema would "
                 "differ. Leave it OFF")
_WRITABLE_SCHEMA = ("PRAGMA writable_schema=ON lets sqlite_schema be edited directly; such edits are "
                    "never replicated (and may stop every follower). Change the schema with CREATE, "
                    "DROP and ALTER statements, which are replicated")
_SCHEMA_VERSION = ("writing PRAGMA schema_version changes the leader's header alone and may corrupt "
                   "the schema cache of every connection to it; it is never replicated. Only a query "
                   "of it is allowed")
_ANALYSIS_LIMIT = ("PRAGMA analysis_limit makes ANALYZE on the leader sample its tables, while followers "
                   "replay the same ANALYZE in full: the statistics, and so the query plans (and the "
                   "order of rows a statement visits), would differ between nodes. Leave it 0")
_COUNT_CHANGES = ("PRAGMA count_changes is deprecated and makes every INSERT, UPDATE and DELETE on the "
                  "leader connection return a row, replproxy's own included; read cursor.rowcount "
                  "(or SELECT changes()) instead")
_OPTIMIZE = ("PRAGMA optimize runs ANALYZE on the leader alone: its statistics (sqlite_stat1) would "
             "never reach the followers. Run ANALYZE with a table or index name instead "
             "(ANALYZE mytable), which is replicated")

PRAGMAS: dict[str, Rule] = {
    # reports
    **{name: Rule(QUERY) for name in (
        "collation_list", "compile_options", "data_version", "database_list", "foreign_key_check",
        "foreign_key_list", "freelist_count", "function_list", "index_info", "index_list",
        "index_xinfo", "integrity_check", "module_list", "page_count", "pragma_list", "quick_check",
        "table_info", "table_list", "table_xinfo",
    )},
    "schema_version": Rule(QUERY, _never_set(_SCHEMA_VERSION)),
    # settings of the session's connection (the leader's, mirrored to its follower reads)
    **{name: Rule(SETTING) for name in (
        "automatic_index", "busy_timeout", "cache_size", "cache_spill",
        "case_sensitive_like", "cell_size_check", "checkpoint_fullfsync", "empty_result_callbacks",
        "encoding", "foreign_keys", "full_column_names", "fullfsync", "hard_heap_limit",
        "journal_size_limit", "max_page_count", "mmap_size", "read_uncommitted",
        "recursive_triggers", "reverse_unordered_selects", "secure_delete", "short_column_names",
        "soft_heap_limit", "synchronous", "temp_store", "temp_store_directory", "threads",
        "trusted_schema", "wal_autocheckpoint",
    )},
    "shrink_memory": Rule(SETTING, mirror=False),  # an action on the leader connection's memory
    # followers are read-only whatever the session says
    "query_only": Rule(SETTING, mirror=False),
    "ignore_check_constraints": Rule(SETTING, _check_constraints),
    "count_changes": Rule(SETTING, _only_off(_COUNT_CHANGES)),
    "analysis_limit": Rule(SETTING, _only_off(_ANALYSIS_LIMIT)),
    "legacy_alter_table": Rule(SETTING, _only_off(_LEGACY_ALTER)),
    "writable_schema": Rule(SETTING, _only_off(_WRITABLE_SCHEMA), mirror=False),
    "journal_mode": Rule(SETTING, _journal_mode, mirror=False),
    "locking_mode": Rule(SETTING, _locking_mode, mirror=False),
    # the open transaction
    "defer_foreign_keys": Rule(TRANSACTION),
    # replicated header values
    "user_version": Rule(HEADER),
    "application_id": Rule(HEADER),
    # the leader's own file: its layout and its WAL, not its content
    "auto_vacuum": Rule(LEADER_FILE, bare_is_query=True),
    "page_size": Rule(LEADER_FILE, bare_is_query=True),
    "incremental_vacuum": Rule(LEADER_FILE),
    "wal_checkpoint": Rule(LEADER_FILE),
    "optimize": Rule(REFUSED, _always(_OPTIMIZE)),
}

_KNOWN_TO_SQLITE: frozenset[str] | None = None


def known_to_sqlite() -> frozenset[str]:
    """The PRAGMAs this SQLite library implements."""
    global _KNOWN_TO_SQLITE
    if _KNOWN_TO_SQLITE is None:
        conn = apsw.Connection(":memory:")
        try:
            _KNOWN_TO_SQLITE = frozenset(r[0] for r in conn.execute("PRAGMA pragma_list"))
        finally:
            conn.close()
    return _KNOWN_TO_SQLITE


def rule_for(name: str | None) -> Rule:
    """The rule of a PRAGMA. One SQLite does not know does nothing there: a query. One it knows
    and this table does not (a newer SQLite) is refused until someone decides its rule."""
    key = (name or "").lower()
    rule = PRAGMAS.get(key)
    if rule is not None:
        return rule
    if key in known_to_sqlite():
        return Rule(REFUSED, _always(
            f"replproxy does not know what PRAGMA {key} does to replication, so it is refused"))
    return Rule(QUERY)


def refusal(name: str | None, value: str | None, fmt: Any) -> str | None:
    """Why this PRAGMA with this value is refused under the log format `fmt`, or None."""
    rule = rule_for(name)
    if rule.check is None:
        return None
    return rule.check(value, fmt)


def follower_may_run(name: str | None, value: str | None) -> bool:
    """Whether a follower connection may run this PRAGMA: reports, and the settings mirrored to it
    (query_only only to turn it on). Nothing that writes its file."""
    rule = rule_for(name)
    if rule.kind == QUERY:
        return value is None or rule.check is None or rule.check(value, None) is None
    if rule.kind == LEADER_FILE:
        return not rule.acts(value)
    if (name or "").lower() == "query_only":
        return value is None or not _off(value)
    if rule.kind == SETTING:
        return rule.mirror or value is None
    return False


def mirrored(name: str, value: str) -> bool:
    """Whether a setting the session made is also made on its follower read connections."""
    rule = rule_for(name)
    return rule.kind == SETTING and rule.mirror and follower_may_run(name, value)


# What a follower connection of the proxy may do: read, and run the PRAGMAs above. The applier
# writes followers through connections of its own, which have no such authorizer.
_READ_ACTIONS = frozenset({
    apsw.SQLITE_SELECT, apsw.SQLITE_READ, apsw.SQLITE_FUNCTION, apsw.SQLITE_RECURSIVE,
    apsw.SQLITE_TRANSACTION,
})


def read_only_authorizer(code: int, arg1: Any, arg2: Any, dbname: Any, trigger: Any) -> int:
    """The authorizer of a follower connection: SQLite itself refuses anything that could change
    the follower's file ("not authorized"), whatever reaches the connection."""
    if code in _READ_ACTIONS:
        return apsw.SQLITE_OK
    if code == apsw.SQLITE_PRAGMA and follower_may_run(arg1, arg2):
        return apsw.SQLITE_OK
    return apsw.SQLITE_DENY
