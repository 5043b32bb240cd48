"""The durable state of one mirror: the SQLite queue (series and object rows, leases,
running totals) and the lock that keeps one idc-sync per state directory. The only package
that speaks SQLite SQL."""
