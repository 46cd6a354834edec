"""
txcb's benchmark harness: txcb against memcached and the clients people use
with it, side by side in one run.  ``python -m bench --help`` for the options.

- :mod:`bench.run` checks prerequisites, starts the servers, runs every job in
  its own client process, prints the table and writes JSON (+ PNG).
- :mod:`bench.worker` is the client process: one job, one JSON line out.
- :mod:`bench.echo` is the echo server for the round-trip floor.
"""
