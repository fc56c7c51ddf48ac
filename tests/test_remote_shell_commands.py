"""The sqlite3 shell's commands on a distributed cluster (docs/shell.md): `.import` and `.dump` go
through the remote connection (one log entry for an import; a dump sqlite3 loads), while `.once`,
the modes and `.width` are the front end's and work as on an embedded cluster. The nodes are real
`replproxy serve` processes on a real NATS server."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import pytest
from distnodes import Cluster, Node

import proxy
from proxy.tools.shell.repl import Shell

pytest.importorskip("pexpect")  # (as the other distributed shell tests: a POSIX machine)



def _two(dist: Cluster) -> tuple[Node, Node]:
    a = dist.init("a").serve()
    dist.wait_serving(a)
    b = dist.join("b").serve()
    dist.wait_reporting(a, b)
    return a, b


def test_import_dump_once_and_modes_over_nats(dist: Cluster, tmp_path: Path) -> None:
    a, b = _two(dist)
    url = f"{dist.nats}/{dist.name}"
    out, err = io.StringIO(), io.StringIO()
    shell = Shell(None, stdout=out, stderr=err, conn=proxy.connect(url, autocommit=True), target=url)

    def feed(script: str) -> tuple[str, str]:
        out_at, err_at = out.tell(), err.tell()
        shell.run_script(io.StringIO(script))
        return out.getvalue()[out_at:], err.getvalue()[err_at:]

    try:
        data = tmp_path / "items.csv"
        data.write_text("id,item,price\n1,book,12.5\n2,\"pen, blue\",1\n3,lamp,30\n", encoding="utf-8")
        _, said = feed(f".import {data} items\n")
        assert "-- 3 rows imported into items (created) · a (leader) at LSN 1" in said, said
        assert shell.conn.last_write_lsn == 1  # the table and its rows: one log entry

        bad = tmp_path / "bad.csv"
        bad.write_text("4,cup,2\n5,plate\n", encoding="utf-8")
        _, said = feed(f".import {bad} items\n")
        assert f"{bad} line 2: expected 3 columns, found 2; nothing imported" in said
        clash = tmp_path / "clash.csv"
        clash.write_text("4,cup,2\n1,again,3\n", encoding="utf-8")
        _, said = feed(f"CREATE UNIQUE INDEX items_id ON items(id);\n.import {clash} items\n")
        assert "-- a (leader) at LSN 2" in said
        # Over NATS the rows go in batches: the error names the lines of the batch that failed.
        assert f"{clash} a row in lines 1-2: UNIQUE constraint failed: items.id; nothing imported" in said
        assert shell.conn.last_write_lsn == 2 and not shell.conn.in_transaction

        # Front-end settings work as on an embedded cluster.
        once = tmp_path / "once.md"
        shown, _ = feed(f".mode markdown\n.width 4\n.once {once}\nSELECT item, price FROM items ORDER BY id;\n"
                        ".mode quote\nSELECT item FROM items WHERE id = 2;\n")
        assert once.read_text() == ("| item | price |\n|------|-------|\n| book | 12.5  |\n"
                                    "| pen, | 1     |\n| blue |       |\n| lamp | 30    |\n")
        assert shown == "'item'\n'pen, blue'\n"

        dump, said = feed(".dump\n")
        assert "Error" not in said, said
        assert dump.splitlines()[2:6] == [
            "CREATE TABLE items(id TEXT, item TEXT, price TEXT);", "INSERT INTO items VALUES('1','book','12.5');",
            "INSERT INTO items VALUES('2','pen, blue','1');", "INSERT INTO items VALUES('3','lamp','30');"]
        assert dump.endswith("CREATE UNIQUE INDEX items_id ON items(id);\nCOMMIT;\n")
        assert "_replproxy" not in dump
        loaded = sqlite3.connect(":memory:")
        loaded.executescript(dump)
        assert loaded.execute("SELECT * FROM items ORDER BY id").fetchall() == [
            ("1", "book", "12.5"), ("2", "pen, blue", "1"), ("3", "lamp", "30")]
        assert shell.conn.last_write_lsn == 2 and not shell.conn.in_transaction  # reading it wrote nothing
    finally:
        shell.close()
