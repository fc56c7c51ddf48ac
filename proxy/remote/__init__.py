"""Clients on other machines: the PEP 249 driver over NATS request-reply (docs/remote.md)."""

from __future__ import annotations
