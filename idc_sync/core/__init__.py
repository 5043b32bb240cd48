"""The pure core: what a series, an object and a selection are, the life cycle and its
table of moves, retry and verification verdicts, layout, routing, license policy, shards,
schedules and planning. Nothing here touches a network, a disk or a clock."""
