"""The results contract's machinery, below the tasks.

The store (atomic writes with their change events, fresh reads), its key names, the
single-flight leases and fetch-once path, the replica wait, the failure record's shape
and its buffer, and the one-line outcome log's notes. What any upstream's job needs to
keep a result, and nothing of any one upstream: `tasks/` holds the upstream jobs and
their transforms, and uses this room; this room never imports `tasks/`.
"""
