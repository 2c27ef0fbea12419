"""The one process harness: `make run`, `make demo`, the benchmarks and the suite.

One module per purpose: free ports (`ports`), bounded waits (`waits`), children in
their own sessions that end with their parent (`children`), private redis-servers
(`redis_server`: a durable one for `make run`, `DisposableRedis` for the suite and the
benchmarks) and the worker process the suite and the benchmarks start (`worker`).

Both start real processes (redis-server, Celery) and must leave nothing behind: every
child runs in its own process group, so stopping it also stops whatever it forked, and
nothing else on the machine is ever signalled. Waiting is always bounded by a deadline,
so a process that never comes up fails the caller instead of hanging it.
"""
