"""Running the mirror: the workers that lease series and place verified files, and the jobs
(plan, sync, status, verify, retry-failed) that ``sync`` and ``serve`` share."""
