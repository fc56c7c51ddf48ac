"""Sample workloads for `replproxy compare`: what distinguishes the replication log formats.

Each workload is a function `run(conn, scale)` over a DB-API-like connection opened with
autocommit off (`proxy.connect(..., autocommit=False)`, or `PlainConnection` over apsw for the
no-replication baseline): it creates and seeds its own schema (a copy of the shop/bank/blog
schemas of `sample_dbs/build.py`, so it works after a plain `pip install .`), then runs its
transactions with `cursor.execute`/`executemany` and `conn.commit()`. Everything is generated from
a fixed seed: two runs write the same rows, except for what the nondeterministic workload asks
SQLite itself to compute.

Workloads never read outside a write transaction (so they need no follower) and are written to be
safe for the statement format's rules; a format that refuses a statement makes the run "refused".
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import apsw

SEED = 20261126

WORDS = ("replica leader follower log lag snapshot epoch quorum commit apply row statement trigger "
         "conflict failover fencing lease offset stream page index cursor durable").split()
NAMES = ("Ada Grace Linus Barbara Edsger Donald Frances Ken Dennis Margaret Radia Leslie Tony Jim "
         "Sophie Yukihiro Guido Bjarne Anders Ward 지수 Zoë Łukasz Ōta").split()
COUNTRIES = ("KR", "DE", "FR", "US", "JP", "BR", "IN", "NG", "SE", "CA")

SHOP = [
    """CREATE TABLE customers(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, name TEXT NOT NULL,
       country TEXT NOT NULL, created_at TEXT NOT NULL)""",
    """CREATE TABLE products(sku TEXT PRIMARY KEY, title TEXT NOT NULL,
       price_cents INTEGER NOT NULL CHECK (price_cents >= 0), stock INTEGER NOT NULL CHECK (stock >= 0))
       WITHOUT ROWID""",
    """CREATE TABLE orders(id INTEGER PRIMARY KEY AUTOINCREMENT,
       customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
       status TEXT NOT NULL DEFAULT 'new', placed_at TEXT NOT NULL)""",
    """CREATE TABLE order_lines(order_id INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
       sku TEXT NOT NULL REFERENCES products(sku), quantity INTEGER NOT NULL CHECK (quantity > 0),
       price_cents INTEGER NOT NULL, PRIMARY KEY (order_id, sku))""",
    "CREATE INDEX orders_by_customer ON orders(customer_id)",
    """CREATE TRIGGER take_stock AFTER INSERT ON order_lines BEGIN
       UPDATE products SET stock = stock - NEW.quantity WHERE sku = NEW.sku; END""",
]

BANK = [
    """CREATE TABLE accounts(id INTEGER PRIMARY KEY, owner TEXT NOT NULL,
       balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0), opened_at TEXT NOT NULL)""",
    """CREATE TABLE transfers(id INTEGER PRIMARY KEY AUTOINCREMENT,
       from_id INTEGER NOT NULL REFERENCES accounts(id), to_id INTEGER NOT NULL REFERENCES accounts(id),
       amount_cents INTEGER NOT NULL CHECK (amount_cents > 0), at TEXT NOT NULL)""",
    "CREATE TABLE audit(id INTEGER PRIMARY KEY, account_id INTEGER NOT NULL, old_balance INTEGER, new_balance INTEGER)",
    """CREATE TRIGGER audit_balance AFTER UPDATE OF balance_cents ON accounts BEGIN
       INSERT INTO audit(account_id, old_balance, new_balance)
       VALUES (OLD.id, OLD.balance_cents, NEW.balance_cents); END""",
]

BLOG = [
    "CREATE TABLE users(id INTEGER PRIMARY KEY, handle TEXT NOT NULL UNIQUE, bio TEXT, avatar BLOB)",
    """CREATE TABLE posts(id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
       title TEXT NOT NULL, body TEXT NOT NULL, published_at TEXT NOT NULL)""",
    """CREATE TABLE comments(id INTEGER PRIMARY KEY,
       post_id INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
       author_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
       body TEXT NOT NULL, created_at TEXT NOT NULL)""",
    "CREATE INDEX comments_by_post ON comments(post_id)",
]


def _day(rng: random.Random) -> str:
    return (f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} "
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00")


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def _schema(conn: Any, statements: list[str]) -> None:
    cur = conn.cursor()
    for sql in statements:
        cur.execute(sql)
    conn.commit()


def _seed_shop(conn: Any, rng: random.Random, scale: int) -> list[str]:
    _schema(conn, SHOP)
    cur = conn.cursor()
    cur.executemany("INSERT INTO customers VALUES (?,?,?,?,?)", [
        (i, f"user{i}@example.org", rng.choice(NAMES), rng.choice(COUNTRIES), _day(rng))
        for i in range(1, 20 * scale + 1)])
    skus = [f"SKU-{i:05d}" for i in range(1, 10 * scale + 1)]
    cur.executemany("INSERT INTO products VALUES (?,?,?,?)", [
        (sku, _text(rng, 3).title(), rng.randint(100, 20000), 100_000) for sku in skus])
    conn.commit()
    return skus


# -- the workloads --------------------------------------------------------------------------------


def oltp(conn: Any, scale: int) -> None:
    """Single-row OLTP writes: autocommit-sized transactions of one INSERT, UPDATE or DELETE."""
    rng = random.Random(SEED)
    _seed_shop(conn, rng, scale)
    cur = conn.cursor()
    customers = 20 * scale
    for i in range(40 * scale):
        kind = i % 4
        if kind == 0:
            customers += 1
            cur.execute("INSERT INTO customers VALUES (?,?,?,?,?)",
                        (customers, f"user{customers}@example.org", rng.choice(NAMES),
                         rng.choice(COUNTRIES), _day(rng)))
        elif kind == 1:
            cur.execute("UPDATE customers SET country = ? WHERE id = ?",
                        (rng.choice(COUNTRIES), rng.randint(1, customers)))
        elif kind == 2:
            cur.execute("UPDATE products SET price_cents = ? WHERE sku = ?",
                        (rng.randint(100, 20000), f"SKU-{rng.randint(1, 10 * scale):05d}"))
        else:
            cur.execute("INSERT INTO orders(customer_id, placed_at) VALUES (?, ?)",
                        (rng.randint(1, customers), _day(rng)))
        conn.commit()


def transactions(conn: Any, scale: int) -> None:
    """Multi-row transactions: orders of several lines (a user trigger takes stock) and bank
    transfers moving money between two accounts with a transfer row."""
    rng = random.Random(SEED)
    skus = _seed_shop(conn, rng, scale)
    for sql in BANK:
        conn.cursor().execute(sql)
    cur = conn.cursor()
    accounts = 10 * scale
    cur.executemany("INSERT INTO accounts VALUES (?,?,?,?)",
                    [(i, rng.choice(NAMES), 1_000_000, _day(rng)) for i in range(1, accounts + 1)])
    conn.commit()
    order_id = 0
    for _ in range(15 * scale):
        order_id += 1
        cur.execute("INSERT INTO orders(id, customer_id, status, placed_at) VALUES (?, ?, 'new', ?)",
                    (order_id, rng.randint(1, 20 * scale), _day(rng)))
        for sku in rng.sample(skus, min(len(skus), rng.randint(2, 5))):
            cur.execute("INSERT INTO order_lines VALUES (?,?,?,?)",
                        (order_id, sku, rng.randint(1, 3), rng.randint(100, 20000)))
        conn.commit()
        a, b = rng.sample(range(1, accounts + 1), 2)
        amount = rng.randint(1, 5000)
        cur.execute("UPDATE accounts SET balance_cents = balance_cents - ? WHERE id = ?", (amount, a))
        cur.execute("UPDATE accounts SET balance_cents = balance_cents + ? WHERE id = ?", (amount, b))
        cur.execute("INSERT INTO transfers(from_id, to_id, amount_cents, at) VALUES (?,?,?,?)",
                    (a, b, amount, _day(rng)))
        conn.commit()


def bulk(conn: Any, scale: int) -> None:
    """One bulk UPDATE and one bulk DELETE, each touching many rows: a tiny statement, huge row images."""
    rng = random.Random(SEED)
    _schema(conn, ["CREATE TABLE events(id INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
                   "amount INTEGER NOT NULL, note TEXT NOT NULL)"])
    cur = conn.cursor()
    rows = 500 * scale
    for start in range(0, rows, 100):
        cur.executemany("INSERT INTO events VALUES (?,?,?,?)",
                        [(i, rng.choice(WORDS), rng.randint(1, 10_000), _text(rng, 6))
                         for i in range(start + 1, min(rows, start + 100) + 1)])
        conn.commit()
    cur.execute("UPDATE events SET amount = amount * 2 + 1, kind = upper(kind)")
    conn.commit()
    cur.execute("DELETE FROM events WHERE id % 3 = 0")
    conn.commit()


def nondeterministic(conn: Any, scale: int) -> None:
    """random(), datetime('now') and DEFAULT CURRENT_TIMESTAMP, written where the statement format
    can rewrite them (one value per statement). Statement-based replication without rewriting
    re-evaluates them on each follower and diverges."""
    rng = random.Random(SEED)
    _schema(conn, ["CREATE TABLE sessions(id INTEGER PRIMARY KEY, token INTEGER NOT NULL, "
                   "user TEXT NOT NULL, started TEXT NOT NULL, "
                   "created_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP, seen TEXT)"])
    cur = conn.cursor()
    for i in range(1, 20 * scale + 1):
        cur.execute("INSERT INTO sessions(id, token, user, started) "
                    "VALUES (?, random(), ?, strftime('%Y-%m-%d %H:%M:%f', 'now'))",
                    (i, rng.choice(NAMES)))
        conn.commit()
        if i % 2 == 0:
            cur.execute("UPDATE sessions SET token = random(), seen = datetime('now') WHERE id = ?",
                        (rng.randint(1, i),))
            conn.commit()


def large_values(conn: Any, scale: int) -> None:
    """Large TEXT and BLOB values: blog posts of tens of KiB and avatars, then edits of one column."""
    rng = random.Random(SEED)
    _schema(conn, BLOG)
    cur = conn.cursor()
    for i in range(1, 5 * scale + 1):
        avatar = rng.randbytes(16_384 + rng.randint(0, 16_384))
        cur.execute("INSERT INTO users VALUES (?,?,?,?)", (i, f"user{i}", _text(rng, 200), avatar))
        conn.commit()
    for i in range(1, 10 * scale + 1):
        body = _text(rng, 4000 + rng.randint(0, 4000))  # 30-60 KiB of text
        cur.execute("INSERT INTO posts VALUES (?,?,?,?,?)",
                    (i, rng.randint(1, 5 * scale), _text(rng, 5).title(), body, _day(rng)))
        conn.commit()
    for i in range(1, 10 * scale + 1, 2):
        cur.execute("UPDATE posts SET title = ? WHERE id = ?", (_text(rng, 4).title(), i))
        conn.commit()


def migration(conn: Any, scale: int) -> None:
    """A schema migration: ALTER TABLE ADD COLUMN, a backfill UPDATE of every row, an index, and a
    new table filled from the old one (INSERT ... SELECT ORDER BY its key)."""
    rng = random.Random(SEED)
    _seed_shop(conn, rng, scale * 5)
    cur = conn.cursor()
    cur.execute("ALTER TABLE customers ADD COLUMN email_domain TEXT")
    cur.execute("UPDATE customers SET email_domain = substr(email, instr(email, '@') + 1)")
    cur.execute("CREATE INDEX customers_by_domain ON customers(email_domain)")
    conn.commit()
    cur.execute("ALTER TABLE products ADD COLUMN price_band TEXT NOT NULL DEFAULT 'mid'")
    cur.execute("UPDATE products SET price_band = CASE WHEN price_cents < 5000 THEN 'low' "
                "WHEN price_cents > 15000 THEN 'high' ELSE 'mid' END")
    conn.commit()
    cur.execute("CREATE TABLE customers_new(id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, "
                "name TEXT NOT NULL, country TEXT NOT NULL, created_at TEXT NOT NULL, "
                "email_domain TEXT, vip INTEGER NOT NULL DEFAULT 0)")
    cur.execute("INSERT INTO customers_new(id, email, name, country, created_at, email_domain) "
                "SELECT id, email, name, country, created_at, email_domain FROM customers ORDER BY id")
    conn.commit()
    cur.execute("UPDATE customers_new SET vip = 1 WHERE id % 7 = 0")
    conn.commit()


def triggers_cascades(conn: Any, scale: int) -> None:
    """User triggers and foreign-key cascades: an audit trigger on every balance change, and
    deleting customers and posts cascades to their orders, order lines and comments."""
    rng = random.Random(SEED)
    cur = conn.cursor()
    cur.execute("PRAGMA foreign_keys = ON")
    _seed_shop(conn, rng, scale)
    for sql in BANK + BLOG:
        cur.execute(sql)
    conn.commit()
    accounts = 10 * scale
    cur.executemany("INSERT INTO accounts VALUES (?,?,?,?)",
                    [(i, rng.choice(NAMES), 1_000_000, _day(rng)) for i in range(1, accounts + 1)])
    conn.commit()
    order_id = 0
    for customer in range(1, 20 * scale + 1):
        for _ in range(2):
            order_id += 1
            cur.execute("INSERT INTO orders(id, customer_id, placed_at) VALUES (?,?,?)",
                        (order_id, customer, _day(rng)))
            cur.execute("INSERT INTO order_lines VALUES (?,?,?,?)",
                        (order_id, f"SKU-{rng.randint(1, 10 * scale):05d}", 1, rng.randint(100, 9000)))
        conn.commit()
    users = 5 * scale
    cur.executemany("INSERT INTO users(id, handle, bio) VALUES (?,?,?)",
                    [(i, f"user{i}", _text(rng, 10)) for i in range(1, users + 1)])
    comment = 0
    for post in range(1, 10 * scale + 1):
        cur.execute("INSERT INTO posts VALUES (?,?,?,?,?)",
                    (post, rng.randint(1, users), _text(rng, 4), _text(rng, 40), _day(rng)))
        for _ in range(3):
            comment += 1
            cur.execute("INSERT INTO comments VALUES (?,?,?,?,?)",
                        (comment, post, rng.randint(1, users), _text(rng, 12), _day(rng)))
    conn.commit()
    for _ in range(10 * scale):
        cur.execute("UPDATE accounts SET balance_cents = balance_cents - ? WHERE id = ?",
                    (rng.randint(1, 1000), rng.randint(1, accounts)))
        conn.commit()
    for customer in range(1, 20 * scale + 1, 3):
        cur.execute("DELETE FROM customers WHERE id = ?", (customer,))  # cascades to orders, lines
        conn.commit()
    for user in range(1, users + 1, 2):
        cur.execute("DELETE FROM users WHERE id = ?", (user,))  # cascades to posts and comments
        conn.commit()


WORKLOADS: dict[str, Callable[[Any, int], None]] = {
    "oltp": oltp,
    "transactions": transactions,
    "bulk": bulk,
    "nondeterministic": nondeterministic,
    "large-values": large_values,
    "migration": migration,
    "triggers-cascades": triggers_cascades,
}


def names() -> list[str]:
    return list(WORKLOADS)


def describe(name: str) -> str:
    doc = WORKLOADS[name].__doc__ or ""
    return " ".join(doc.split())


# -- the no-replication baseline ------------------------------------------------------------------


class PlainCursor:
    def __init__(self, owner: PlainConnection):
        self._owner = owner

    def execute(self, sql: str, params: Any = ()) -> PlainCursor:
        self._owner._begin(sql)
        self._owner.conn.execute(sql, params).fetchall()
        return self

    def executemany(self, sql: str, seq: Any) -> PlainCursor:
        self._owner._begin(sql)
        self._owner.conn.executemany(sql, seq).fetchall()
        return self


class PlainConnection:
    """Just enough of DB-API over a plain apsw connection (autocommit off, as Python's sqlite3):
    a write opens a transaction that `commit()` ends. Counts the transactions that committed."""

    def __init__(self, path: str, synchronous: str = "full"):
        self.conn = apsw.Connection(path)
        self.conn.execute("PRAGMA journal_mode=WAL").fetchall()
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.transactions = 0

    def _begin(self, sql: str) -> None:
        if sql.lstrip()[:6].upper() == "PRAGMA":
            return
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")

    def cursor(self) -> PlainCursor:
        return PlainCursor(self)

    def commit(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("COMMIT")
            self.transactions += 1

    def close(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        self.conn.close()
