"""Build the sample databases reproducibly: `python sample_dbs/build.py [--scale N] [--out DIR]`.

Three small but realistic schemas, generated from a fixed seed so every build is byte-for-byte the
same content:

- shop.db: customers, products, orders and order lines, a trigger keeping stock, foreign keys with
  ON DELETE CASCADE, an AUTOINCREMENT table;
- bank.db: accounts with a CHECK on the balance, transfers, an audit table filled by triggers;
- blog.db: users, posts, comments (cascade), a tag link table without a PRIMARY KEY, and large TEXT
  and BLOB values.

Each exercises something that distinguishes the log formats (triggers, cascades, tables without a
key, AUTOINCREMENT, large values). Scale 1 is what the repository keeps.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
from pathlib import Path

SEED = 20261126

SHOP = """
CREATE TABLE customers(
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    country TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE products(
    sku TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    price_cents INTEGER NOT NULL CHECK (price_cents >= 0),
    stock INTEGER NOT NULL CHECK (stock >= 0)
) WITHOUT ROWID;
CREATE TABLE orders(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    customer_id INTEGER NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    status TEXT NOT NULL DEFAULT 'new',
    placed_at TEXT NOT NULL
);
CREATE TABLE order_lines(
    order_id INTEGER NOT NULL REFERENCES orders(id) ON DELETE CASCADE,
    sku TEXT NOT NULL REFERENCES products(sku),
    quantity INTEGER NOT NULL CHECK (quantity > 0),
    price_cents INTEGER NOT NULL,
    PRIMARY KEY (order_id, sku)
);
CREATE INDEX orders_by_customer ON orders(customer_id);
CREATE TRIGGER take_stock AFTER INSERT ON order_lines BEGIN
    UPDATE products SET stock = stock - NEW.quantity WHERE sku = NEW.sku;
END;
"""

BANK = """
CREATE TABLE accounts(
    id INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    balance_cents INTEGER NOT NULL CHECK (balance_cents >= 0),
    opened_at TEXT NOT NULL
);
CREATE TABLE transfers(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    from_id INTEGER NOT NULL REFERENCES accounts(id),
    to_id INTEGER NOT NULL REFERENCES accounts(id),
    amount_cents INTEGER NOT NULL CHECK (amount_cents > 0),
    at TEXT NOT NULL
);
CREATE TABLE audit(
    id INTEGER PRIMARY KEY,
    account_id INTEGER NOT NULL,
    old_balance INTEGER,
    new_balance INTEGER
);
CREATE TRIGGER audit_balance AFTER UPDATE OF balance_cents ON accounts BEGIN
    INSERT INTO audit(account_id, old_balance, new_balance)
    VALUES (OLD.id, OLD.balance_cents, NEW.balance_cents);
END;
"""

BLOG = """
CREATE TABLE users(
    id INTEGER PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE,
    bio TEXT,
    avatar BLOB
);
CREATE TABLE posts(
    id INTEGER PRIMARY KEY,
    author_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    published_at TEXT NOT NULL
);
CREATE TABLE comments(
    id INTEGER PRIMARY KEY,
    post_id INTEGER NOT NULL REFERENCES posts(id) ON DELETE CASCADE,
    author_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE post_tags(post_id INTEGER NOT NULL, tag TEXT NOT NULL);
CREATE INDEX comments_by_post ON comments(post_id);
"""

WORDS = ("replica leader follower log lag snapshot epoch quorum commit apply row statement trigger "
         "conflict failover fencing lease offset stream page index cursor durable").split()
NAMES = ("Ada Grace Linus Barbara Edsger Donald Frances Ken Dennis Margaret Radia Leslie Tony Jim "
         "Sophie Yukihiro Guido Bjarne Anders Ward 지수 Zoë Łukasz Ōta").split()
COUNTRIES = ("KR", "DE", "FR", "US", "JP", "BR", "IN", "NG", "SE", "CA")


def _day(rng: random.Random) -> str:
    day = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"{day} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def build_shop(path: Path, scale: int, rng: random.Random) -> None:
    with _fresh(path) as db:
        db.executescript(SHOP)
        customers = 50 * scale
        db.executemany("INSERT INTO customers VALUES (?,?,?,?,?)", [
            (i, f"user{i}@example.org", rng.choice(NAMES), rng.choice(COUNTRIES), _day(rng))
            for i in range(1, customers + 1)])
        skus = [f"SKU-{i:05d}" for i in range(1, 20 * scale + 1)]
        db.executemany("INSERT INTO products VALUES (?,?,?,?)", [
            (sku, _text(rng, 3).title(), rng.randint(100, 20000), rng.randint(500, 5000)) for sku in skus])
        for _ in range(80 * scale):
            cur = db.execute("INSERT INTO orders(customer_id, status, placed_at) VALUES (?,?,?)",
                             (rng.randint(1, customers), rng.choice(("new", "paid", "shipped")), _day(rng)))
            for sku in rng.sample(skus, rng.randint(1, 4)):
                db.execute("INSERT INTO order_lines VALUES (?,?,?,?)",
                           (cur.lastrowid, sku, rng.randint(1, 3), rng.randint(100, 20000)))


def build_bank(path: Path, scale: int, rng: random.Random) -> None:
    with _fresh(path) as db:
        db.executescript(BANK)
        accounts = 40 * scale
        db.executemany("INSERT INTO accounts VALUES (?,?,?,?)", [
            (i, rng.choice(NAMES), rng.randint(10_000, 1_000_000), _day(rng)) for i in range(1, accounts + 1)])
        for _ in range(100 * scale):
            a, b = rng.sample(range(1, accounts + 1), 2)
            amount = rng.randint(1, 5000)
            db.execute("UPDATE accounts SET balance_cents = balance_cents - ? WHERE id = ?", (amount, a))
            db.execute("UPDATE accounts SET balance_cents = balance_cents + ? WHERE id = ?", (amount, b))
            db.execute("INSERT INTO transfers(from_id, to_id, amount_cents, at) VALUES (?,?,?,?)",
                       (a, b, amount, _day(rng)))


def build_blog(path: Path, scale: int, rng: random.Random) -> None:
    with _fresh(path) as db:
        db.executescript(BLOG)
        users = 30 * scale
        db.executemany("INSERT INTO users VALUES (?,?,?,?)", [
            (i, f"{rng.choice(NAMES).lower()}_{i}", _text(rng, 12) if rng.random() < 0.7 else None,
             rng.randbytes(rng.randint(64, 2048)) if rng.random() < 0.5 else None)
            for i in range(1, users + 1)])
        posts = 60 * scale
        db.executemany("INSERT INTO posts VALUES (?,?,?,?,?)", [
            (i, rng.randint(1, users), _text(rng, 5).capitalize(), _text(rng, rng.randint(50, 600)), _day(rng))
            for i in range(1, posts + 1)])
        db.executemany("INSERT INTO comments VALUES (?,?,?,?,?)", [
            (i, rng.randint(1, posts), rng.randint(1, users), _text(rng, rng.randint(3, 40)), _day(rng))
            for i in range(1, 200 * scale + 1)])
        db.executemany("INSERT INTO post_tags VALUES (?,?)", [
            (rng.randint(1, posts), rng.choice(WORDS)) for _ in range(120 * scale)])


class _fresh:
    """A new database file (any old one removed), committed and closed on exit."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA foreign_keys=ON")
        return self.db

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.db.commit()
            self.db.execute("VACUUM")
        self.db.close()


BUILDERS = {"shop": build_shop, "bank": build_bank, "blog": build_blog}


def build(out: Path, scale: int = 1) -> list[Path]:
    """Build every sample database into `out`; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, builder in BUILDERS.items():
        rng = random.Random(f"{SEED}:{name}:{scale}")
        path = out / f"{name}.db"
        builder(path, scale, rng)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=1, help="size multiplier (default 1)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output directory")
    args = parser.parse_args()
    for path in build(args.out, args.scale):
        print(f"{path}  {path.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
