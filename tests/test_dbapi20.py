"""Stuart Bishop's DB-API 2.0 compliance suite (the `dbapi-compliance` package) with the proxy as
the driver. Optional extensions the suite probes and replproxy leaves out are listed in
docs/dbapi.md."""

from __future__ import annotations

import shutil
import tempfile
import unittest

import dbapi20

import proxy
from proxy.driver.connection import close_shared_clusters


class ReplproxyDBAPI20Test(dbapi20.DatabaseAPI20Test):
    driver = proxy
    connect_kw_args: dict = {}
    lower_func = "lower"  # callproc is not offered: SQLite has no stored procedures

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="replproxy-dbapi20-")
        self.cluster = proxy.Cluster.init(f"{self.directory}/c", followers=1)
        self.connect_args = (f"{self.directory}/c",)
        self.connect_kw_args = {"cluster": self.cluster}

    def tearDown(self) -> None:
        super().tearDown()
        self.cluster.close()
        close_shared_clusters(self.directory)
        shutil.rmtree(self.directory, ignore_errors=True)

    # SQLite has no stored procedures and a single result set per statement.
    def test_nextset(self) -> None:
        raise unittest.SkipTest("nextset: SQLite statements return one result set")

    def test_setoutputsize(self) -> None:
        cur = self._connect().cursor()
        cur.setoutputsize(100)  # accepted and ignored, as PEP 249 allows
