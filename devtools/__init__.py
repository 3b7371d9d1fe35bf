"""Tools that help develop the ledger, never run in production: load generators and benchmarks
(`bench/`), and the embedded PostgreSQL and nats-server of a developer's machine (`embedded/`)."""
