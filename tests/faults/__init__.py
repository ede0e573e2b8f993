"""Infrastructure of the Jepsen-style fault harness (the scenarios that use it live beside it).

- :mod:`.netns`: a network of "hosts" (one Linux network namespace each, on one bridge), with a
  loopback fallback where namespaces cannot be made; whole-link partitions per host.
- :mod:`.proxy`: a user-space TCP proxy with one-way delay, jitter, blackhole partitions and
  connection resets (the kernel here has no netem).
- :mod:`.jobprog`: the program every harness job runs; it leaves one record file per run.
- :mod:`.checker`: reads the runs and the store's final states and reports lost jobs, duplicate
  runs, residency violations and cancel latencies.

The modules are not imported here, so that ``python -m tests.faults.jobprog`` starts quickly.
"""

__all__ = ["checker", "jobprog", "netns", "proxy"]
