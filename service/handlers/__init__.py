"""Use cases: one function per command or query; each loads, decides and appends."""
