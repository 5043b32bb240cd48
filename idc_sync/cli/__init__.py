"""The ``idc-sync`` command line."""
