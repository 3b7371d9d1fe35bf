"""`loyalty bench` (placeholder until the load generator lands)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8080")


def run(args: argparse.Namespace) -> int:
    raise SystemExit("not yet")
