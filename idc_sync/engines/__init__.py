"""Transfer engines behind one interface (``engines.base.Engine``): the native asyncio engine
and the s5cmd engine. An engine lists a series and places one verified object."""
