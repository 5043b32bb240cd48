"""Entry point for ``python -m idc_sync``."""

from idc_sync.cli.entry import main

main()
