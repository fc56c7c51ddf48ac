"""The SQLAlchemy dialect (proxy/integrations/sqlalchemy.py, docs/sqlalchemy.md): engines by URL,
Core, the ORM, reflection, transactions and savepoints, consistency options, session tokens,
Alembic's batch mode and pandas, on embedded clusters and over NATS. After writes every follower is
identical to the leader, and reads come from followers."""

from __future__ import annotations

import datetime
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from checks import node_rows
from distnodes import Cluster as DistCluster
from helpers import run_python
from sqlalchemy import orm
from sqlalchemy.orm import Mapped, mapped_column, relationship

import proxy
from proxy.integrations.sqlalchemy import ReplproxyDialect, session_token


@pytest.fixture
def make_engine(make_cluster: Callable[..., proxy.Cluster]) -> Iterator[Callable[..., Any]]:
    """make_engine(cluster, query="", **create_engine_options): an engine on `cluster`'s directory
    sharing the test's open Cluster; disposed (its connections closed) after the test."""
    engines: list[Any] = []

    def make(cluster: proxy.Cluster, query: str = "", connect_args: dict[str, Any] | None = None,
             **options: Any) -> Any:
        engine = sa.create_engine(f"replproxy:///{cluster.directory}{query}",
                                  connect_args={"cluster": cluster, **(connect_args or {})}, **options)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


def served_by(engine: Any) -> list[str]:
    """The node of each statement the engine runs from now on, in order."""
    nodes: list[str] = []
    sa.event.listen(engine, "after_cursor_execute", lambda conn, cursor, *rest: nodes.append(cursor.node))
    return nodes


def identical(cluster: proxy.Cluster) -> None:
    cluster.wait_for_catchup(30)
    report = proxy.verify(cluster)
    assert report.outcome == "identical", report


def notes_table(metadata: Any) -> Any:
    return sa.Table("notes", metadata,
                    sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("body", sa.String(200), nullable=False),
                    sa.Column("at", sa.DateTime))


# -- URLs ---------------------------------------------------------------------------------------

def connect_args(url: str) -> tuple[list[Any], dict[str, Any]]:
    return ReplproxyDialect().create_connect_args(sa.engine.make_url(url))


def test_urls_map_to_proxy_connect_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert connect_args("replproxy:///rel/dir") == ([str(tmp_path / "rel" / "dir")], {"autocommit": False})
    assert connect_args("replproxy:////abs/dir") == (["/abs/dir"], {"autocommit": False})
    args, options = connect_args("replproxy:////abs/dir?consistency=strong&on_stale=leader&wait_timeout=0.25"
                                 "&max_lag=3&max_staleness=1.5&user=alice&node=node2&session_token=rp1.x")
    assert options == {"autocommit": False, "consistency": "strong", "on_stale": "leader", "wait_timeout": 0.25,
                       "max_lag": 3, "max_staleness": 1.5, "user": "alice", "node": "node2",
                       "session_token": "rp1.x"}
    assert connect_args("replproxy+nats://127.0.0.1:4222/shop?timeout=5&idle_timeout=60&creds=/k/u.creds") == (
        ["nats://127.0.0.1:4222/shop"], {"autocommit": False, "timeout": 5.0, "idle_timeout": 60.0,
                                         "creds": "/k/u.creds"})
    # Several servers: SQLAlchemy's URL has one port (h1:4222,h2:4222 does not parse), so hosts
    # listed before it share it, and ?server= adds a server on any port.
    assert connect_args("replproxy+nats://h1,h2:4222/shop")[0] == ["nats://h1:4222,h2:4222/shop"]
    assert connect_args("replproxy+nats://h1:4222/shop?server=h2:4223&server=h3:4224")[0] == [
        "nats://h1:4222,h2:4223,h3:4224/shop"]
    assert connect_args("replproxy+nats://u:p%40ss@[::1]:4222/shop")[0] == ["nats://u:p%40ss@[::1]:4222/shop"]
    for bad, message in [("replproxy:////d?consistency=strong&bogus=1", "unknown option 'bogus'"),
                         ("replproxy:////d?max_lag=many", "not a int"),
                         ("replproxy:////d?timeout=5", "unknown option 'timeout'"),
                         ("replproxy://host/d", "not a replproxy URL"),
                         ("replproxy://", "not a replproxy URL"),
                         ("replproxy+nats://host:4222", "not a replproxy\\+nats URL")]:
        with pytest.raises(sa.exc.ArgumentError, match=message):
            connect_args(bad)


def test_import_proxy_does_not_load_sqlalchemy() -> None:
    done = run_python("import sys, proxy; print(sorted({'sqlalchemy', 'alembic', 'pandas'} & set(sys.modules)))")
    assert done.stdout.strip() == "[]"


# -- Core and the ORM ---------------------------------------------------------------------------

def test_core_round_trip_by_url_reads_from_a_follower(make_cluster: Callable[..., proxy.Cluster],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = make_cluster("shop")
    monkeypatch.chdir(tmp_path)
    engine = sa.create_engine("replproxy:///shop")  # the process-wide cluster of proxy.connect
    try:
        assert engine.dialect.name == "sqlite" and engine.dialect.driver == "replproxy"
        metadata = sa.MetaData()
        notes = notes_table(metadata)
        metadata.create_all(engine)
        at = datetime.datetime(2024, 5, 1, 12, 30)
        with engine.begin() as conn:
            conn.execute(notes.insert(), [{"body": "one", "at": at}, {"body": "two", "at": None}])
            new_id = conn.execute(notes.insert().values(body="three").returning(notes.c.id)).scalar_one()
        assert new_id == 3
        cluster.wait_for_catchup(30)
        nodes = served_by(engine)
        with engine.connect() as conn:
            rows = conn.execute(sa.select(notes).order_by(notes.c.id)).all()
        assert [tuple(r) for r in rows] == [(1, "one", at), (2, "two", None), (3, "three", None)]
        assert nodes == [nodes[0]] and nodes[0] in cluster.followers
        identical(cluster)
    finally:
        engine.dispose()


class Base(orm.DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50), unique=True)
    books: Mapped[list[Book]] = relationship(back_populates="author", cascade="all, delete-orphan")


class Book(Base):
    __tablename__ = "books"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(sa.String(100), index=True)
    author_id: Mapped[int] = mapped_column(sa.ForeignKey("authors.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def test_orm_round_trip(cluster: proxy.Cluster, make_engine: Callable[..., Any]) -> None:
    engine = make_engine(cluster)
    Base.metadata.create_all(engine)
    with orm.Session(engine) as session:
        session.add_all([Author(name="Le Guin", books=[Book(title="The Dispossessed"), Book(title="Lathe")]),
                         Author(name="Lem", books=[Book(title="Solaris")])])
        session.commit()
    with orm.Session(engine) as session:
        book = session.scalars(sa.select(Book).where(Book.title == "Lathe")).one()
        book.title = "The Lathe of Heaven"
        session.delete(session.scalars(sa.select(Author).where(Author.name == "Lem")).one())
        session.commit()
    cluster.wait_for_catchup(30)
    nodes = served_by(engine)
    with orm.Session(engine) as session:
        titles = session.scalars(sa.select(Book.title).join(Author).where(Author.name == "Le Guin")
                                 .order_by(Book.title)).all()
        assert titles == ["The Dispossessed", "The Lathe of Heaven"]
        assert session.scalar(sa.select(sa.func.count()).select_from(Author)) == 1
    assert nodes and set(nodes) <= set(cluster.followers)
    assert node_rows(cluster, cluster.followers[0], "SELECT title FROM books ORDER BY id") == [
        ("The Dispossessed",), ("The Lathe of Heaven",)]
    identical(cluster)


def test_reflection_lists_the_applications_tables_not_replproxys(cluster: proxy.Cluster,
                                                                 make_engine: Callable[..., Any]) -> None:
    engine = make_engine(cluster)
    Base.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE VIEW titles AS SELECT title FROM books")
    inspector = sa.inspect(engine)
    assert inspector.get_table_names() == ["authors", "books"]
    assert inspector.get_view_names() == ["titles"]
    internal = inspector.get_table_names(sqlite_include_internal=True)
    assert "_replproxy_log" in internal and {"authors", "books"} <= set(internal)
    assert [(c["name"], str(c["type"]), c["primary_key"]) for c in inspector.get_columns("books")] == [
        ("id", "INTEGER", 1), ("title", "VARCHAR(100)", 0), ("author_id", "INTEGER", 0)]
    assert [(i["name"], i["column_names"]) for i in inspector.get_indexes("books")] == [
        ("ix_books_title", ["title"])]
    assert inspector.get_unique_constraints("authors")[0]["column_names"] == ["name"]
    [fk] = inspector.get_foreign_keys("books")
    assert (fk["constrained_columns"], fk["referred_table"], fk["referred_columns"]) == (
        ["author_id"], "authors", ["id"])
    reflected = sa.MetaData()
    reflected.reflect(engine)
    assert sorted(reflected.tables) == ["authors", "books"]


# -- transactions -------------------------------------------------------------------------------

def count(engine: Any, table: str = "notes") -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()


def test_begin_commits_and_rolls_back(cluster: proxy.Cluster, make_engine: Callable[..., Any]) -> None:
    engine = make_engine(cluster)
    metadata = sa.MetaData()
    notes = notes_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(notes.insert().values(body="kept"))
    with pytest.raises(RuntimeError), engine.begin() as conn:
        conn.execute(notes.insert().values(body="rolled back"))
        assert conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one() == 2  # its own write
        raise RuntimeError("abandon")
    with engine.connect() as conn:
        conn.execute(notes.insert().values(body="not committed"))
        conn.rollback()
        conn.execute(notes.insert().values(body="committed"))
        conn.commit()
        conn.execute(notes.insert().values(body="closed without commit"))
    assert count(engine) == 2
    # AUTOCOMMIT: each statement commits by itself.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(notes.insert().values(body="autocommitted"))
        assert not conn.connection.driver_connection.in_transaction
    with engine.connect() as conn:  # the pool gave the setting back
        assert conn.get_isolation_level() == "SERIALIZABLE"
    assert count(engine) == 3
    identical(cluster)


def test_begin_nested_rolls_back_to_its_savepoint_and_the_outer_transaction_decides(
        cluster: proxy.Cluster, make_engine: Callable[..., Any]) -> None:
    engine = make_engine(cluster)
    metadata = sa.MetaData()
    notes = notes_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(notes.insert().values(body="outer"))
        with pytest.raises(RuntimeError), conn.begin_nested():
            conn.execute(notes.insert().values(body="nested, rolled back"))
            raise RuntimeError("undo the savepoint")
        with conn.begin_nested():
            conn.execute(notes.insert().values(body="nested, released"))
    assert count(engine) == 2
    # A savepoint as the first statement: its release must not commit the outer transaction.
    with engine.connect() as conn:
        with conn.begin_nested():
            conn.execute(notes.insert().values(body="released, then rolled back with the outer"))
        assert conn.connection.driver_connection.in_transaction
        conn.rollback()
    assert count(engine) == 2
    with orm.Session(engine) as session:
        session.begin_nested()
        session.execute(notes.insert().values(body="orm savepoint"))
        session.commit()  # releases the savepoint
        session.commit()  # commits the transaction
    assert count(engine) == 3
    identical(cluster)


# -- consistency and sessions -------------------------------------------------------------------

def test_consistency_from_the_url_connect_args_and_execution_options(
        cluster: proxy.Cluster, make_engine: Callable[..., Any]) -> None:
    engine = make_engine(cluster)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t(x)")
        conn.exec_driver_sql("INSERT INTO t VALUES (1)")
    cluster.wait_for_catchup(30)
    select = sa.text("SELECT x FROM t")
    for strong in (make_engine(cluster, "?consistency=strong"),
                   make_engine(cluster, connect_args={"consistency": "strong"})):
        nodes = served_by(strong)
        with strong.connect() as conn:
            assert conn.execute(select).scalar_one() == 1
        assert nodes == [cluster.leader]
    nodes = served_by(engine)
    with engine.connect() as conn:
        conn.execute(select)
        conn.execute(select.execution_options(replproxy_consistency="strong"))
        conn.execute(select)
    with engine.connect().execution_options(replproxy_consistency="strong") as conn:  # this Connection's
        conn.execute(select)
    assert nodes[0] in cluster.followers and nodes[2] in cluster.followers
    assert nodes[1] == nodes[3] == cluster.leader
    with pytest.raises(sa.exc.ProgrammingError, match="unknown consistency level"), engine.connect() as conn:
        conn.execution_options(replproxy_consistency="sometimes").execute(select)


def test_the_engine_is_one_session_and_its_token_continues_it_elsewhere(
        cluster: proxy.Cluster, make_engine: Callable[..., Any]) -> None:
    engine = make_engine(cluster, "?on_stale=leader")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t(x)")
    assert session_token(engine) is not None
    # Two pooled connections; the second has read nothing when the first writes.
    first, second = engine.connect(), engine.connect()
    assert first.connection.driver_connection is not second.connection.driver_connection
    second.close()
    cluster.wait_for_catchup(30)  # the followers have the table, not what comes next
    for follower in cluster.followers:
        cluster.pause(follower)
    try:
        first.exec_driver_sql("INSERT INTO t VALUES (1)")
        first.commit()
        with orm.Session(bind=first) as session:
            assert session_token(session) == session_token(first)
        lsn = first.connection.driver_connection.last_write_lsn
        first.close()
        nodes = served_by(engine)
        with engine.connect() as conn:  # the other pooled connection
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
        assert nodes == [cluster.leader]  # no follower has the write yet: read-your-writes
        token = session_token(engine)
        assert token is not None
        raw = engine.raw_connection()  # any pooled connection holds the engine's session
        try:
            assert raw.driver_connection.session_token == token
        finally:
            raw.close()
        # Another engine continues the session from the token; one without it may read stale.
        other = make_engine(cluster, connect_args={"session_token": token, "on_stale": "leader"})
        with other.connect() as conn:
            assert conn.connection.driver_connection.last_write_lsn == lsn
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 1
        stranger = make_engine(cluster, "?consistency=eventual")
        with stranger.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 0
    finally:
        for follower in cluster.followers:
            cluster.resume(follower)
    identical(cluster)


# -- Alembic and pandas -------------------------------------------------------------------------

ALEMBIC_ENV = '''
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
'''

MIGRATION = '''
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    with op.batch_alter_table("notes") as batch:
        batch.add_column(sa.Column("tag", sa.String(20), nullable=True))
        batch.drop_column("at")


def downgrade():
    with op.batch_alter_table("notes") as batch:
        batch.add_column(sa.Column("at", sa.DateTime, nullable=True))
        batch.drop_column("tag")
'''


def test_an_alembic_migration_in_batch_mode(cluster: proxy.Cluster, make_engine: Callable[..., Any],
                                            tmp_path: Path) -> None:
    scripts = tmp_path / "migrations"
    (scripts / "versions").mkdir(parents=True)
    (scripts / "env.py").write_text(textwrap.dedent(ALEMBIC_ENV))
    (scripts / "versions" / "0001_tag.py").write_text(textwrap.dedent(MIGRATION))
    engine = make_engine(cluster)
    metadata = sa.MetaData()
    notes = notes_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(notes.insert(), [{"body": "a", "at": None}, {"body": "b", "at": datetime.datetime(2024, 1, 1)}])
    config = Config()
    config.set_main_option("script_location", str(scripts))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    inspector = sa.inspect(engine)
    assert sorted(c["name"] for c in inspector.get_columns("notes")) == ["body", "id", "tag"]
    assert "_alembic_tmp_notes" not in inspector.get_table_names()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == [("0001",)]
        assert conn.exec_driver_sql("SELECT id, body, tag FROM notes ORDER BY id").all() == [
            (1, "a", None), (2, "b", None)]
    identical(cluster)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "base")
    assert sorted(c["name"] for c in sa.inspect(engine).get_columns("notes")) == ["at", "body", "id"]
    identical(cluster)


def test_pandas_to_sql_and_read_sql_without_warnings(cluster: proxy.Cluster, make_engine: Callable[..., Any]) -> None:
    frame = pd.DataFrame({"city": ["Oslo", "Lima", "Pune"], "temp": [4.5, 19.0, 31.25],
                          "day": pd.to_datetime(["2024-03-01", "2024-03-02", "2024-03-03"])})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = make_engine(cluster)
        assert frame.to_sql("weather", engine, index=False) == 3
        assert frame.to_sql("weather", engine, index=False, if_exists="append") == 3
        cluster.wait_for_catchup(30)
        nodes = served_by(engine)
        back = pd.read_sql("SELECT city, temp FROM weather WHERE temp > 10 ORDER BY temp", engine)
        query_node = nodes[-1]
        table = pd.read_sql_table("weather", engine)  # reflects the table (PRAGMAs: on the leader) first
        table_node = nodes[-1]
    assert not caught, [str(w.message) for w in caught]
    assert back.to_dict("list") == {"city": ["Lima", "Lima", "Pune", "Pune"], "temp": [19.0, 19.0, 31.25, 31.25]}
    assert len(table) == 6 and list(table["day"][:3]) == list(frame["day"])
    assert query_node in cluster.followers and table_node in cluster.followers
    identical(cluster)


# -- over NATS ----------------------------------------------------------------------------------

def test_core_round_trip_over_nats(dist: DistCluster) -> None:
    a = dist.init("a").serve()
    dist.wait_serving(a)
    b, c = dist.join("b").serve(), dist.join("c").serve()
    dist.wait_reporting(a, b, c)
    engine = sa.create_engine(dist.nats.replace("nats://", "replproxy+nats://") + f"/{dist.name}?timeout=30")
    try:
        metadata = sa.MetaData()
        notes = notes_table(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(notes.insert(), [{"body": "over", "at": None}, {"body": "nats", "at": None}])
        dist.wait_caught_up(a, b, c)
        nodes = served_by(engine)
        with engine.connect() as conn:
            assert conn.execute(sa.select(notes.c.body).order_by(notes.c.id)).scalars().all() == ["over", "nats"]
        assert nodes[0] in ("b", "c")
        assert sa.inspect(engine).get_table_names() == ["notes"]
        with engine.connect() as conn:  # a savepoint first: the outer transaction still decides
            with conn.begin_nested():
                conn.execute(notes.insert().values(body="released"))
            with pytest.raises(RuntimeError), conn.begin_nested():
                conn.execute(notes.insert().values(body="rolled back to the savepoint"))
                raise RuntimeError("undo the savepoint")
            assert conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one() == 3
            conn.rollback()
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one() == 2
            conn.execute(notes.insert().values(body="committed"))
            conn.commit()
            # Its session on the leader has opened: its mode can no longer change.
            with pytest.raises(proxy.NotSupportedError, match="whole engine"):
                conn.execution_options(isolation_level="AUTOCOMMIT")
        autocommit = sa.create_engine(engine.url, isolation_level="AUTOCOMMIT")
        try:
            with autocommit.connect() as conn:
                conn.execute(notes.insert().values(body="autocommitted"))
                assert not conn.connection.driver_connection.in_transaction
                conn.rollback()  # nothing to roll back
            with autocommit.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(notes)).scalar_one() == 4
        finally:
            autocommit.dispose()
        dist.wait_caught_up(a, b, c)
    finally:
        engine.dispose()
    dist.verify(a)
