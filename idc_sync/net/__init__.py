"""Bucket traffic over HTTP: the client that lists, heads and fetches objects, the adaptive
request limit and the bandwidth throttle."""
