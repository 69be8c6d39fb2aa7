"""Many ``pbkv serve`` replicas as one service on Redis (``pbkv serve --cluster URL``).

See ``docs/cluster.md``: partitions (``keys``), leases with fencing tokens (``leases``),
the partitioned event log (``log``), followers of other replicas' partitions (``follower``),
forwarding to owners (``forward``) and the replica that ties them together (``replica``).
"""
