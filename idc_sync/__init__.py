"""idc-sync: keep a verified, resumable local mirror of NCI Imaging Data Commons data."""

__version__ = "0.1.0"
