"""The long-running daemon behind ``idc-sync serve``: its loop, HTTP status and metrics, and
systemd's notify protocol."""
