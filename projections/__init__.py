"""Read models of the event log (projections), kept up to date by the runner.

- projection.py: the fold shared by the per-member read models (Member aggregate, cached)
- balances.py, members.py: the read models and their queries
- log.py: reading and decoding the log; tracking.py: positions and status
- runner.py: following the log in the service; rebuild.py, parallel.py: rebuilding from 0

Projections never import the HTTP layer; the service wires them in.
"""
