"""`loyalty demo`: seeds a realistic multi-channel program into a running service through its own
HTTP API, so that the console (/console) has something to show. Deterministic with `--seed`."""
