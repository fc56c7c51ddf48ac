"""`replproxy exec`: SQL through the proxy, run as `sqlite3 DB "SQL; SQL"` runs it: statement by
statement, each committing by itself unless the SQL opens a transaction with BEGIN; the first
error stops it (what came before stays committed)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..driver.analyze import split_statements
from ..errors import Error
from .render import render


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 60 else text[:57] + "..."


def run_statements(conn: Any, text: str, params: list[Any], mode: str,
                   describe: Callable[[BaseException], str]) -> int:
    """Run every statement of `text` on `conn` and print each result; the exit status."""
    statements = split_statements(text)
    if params and len(statements) > 1:
        raise click.UsageError(f"--param binds the parameters of one statement; this SQL holds {len(statements)}")
    for number, sql in enumerate(statements, 1):
        try:
            cursor = conn.cursor()
            cursor.execute(sql, params)
            rows = cursor.fetchall() if cursor.description else []
        except Error as exc:
            where = f" (statement {number} of {len(statements)}: {_short(sql)})" if len(statements) > 1 else ""
            click.echo(f"replproxy: {describe(exc)}{where}", err=True)
            if number > 1 and not conn.in_transaction:
                click.echo(f"replproxy: the {number - 1} statement(s) before it ran and are committed", err=True)
            return 1
        if cursor.description:
            click.echo(render([d[0] for d in cursor.description], rows, mode), nl=False)
        elif cursor.rowcount >= 0:
            click.echo(f"{cursor.rowcount} row(s) changed", err=True)
        if cursor.node is not None:  # BEGIN and the like run nowhere yet
            where = f"served by {cursor.node}"
            if cursor.lsn:
                where += f" at LSN {cursor.lsn}"
            click.echo(f"-- {where}", err=True)
    if conn.in_transaction:  # as the sqlite3 shell does at exit, but said
        conn.rollback()
        click.echo("replproxy: the transaction the SQL opened (BEGIN) was not committed: it was rolled back",
                   err=True)
        return 1
    return 0
