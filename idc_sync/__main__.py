"""Entry point for ``python -m idc_sync``."""

from idc_sync.cli import main

main()
