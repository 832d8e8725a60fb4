"""The workers: one attempt engine, two drivers.

Shared, without IO:

* ``_config``: settings, the handler registry, retry and counting (``WorkerCore``);
* ``_policy``: every decision a worker takes, as pure functions of ``now``;
* ``_effects``: the IO requests the flows make of a driver;
* ``_flow``: the attempt algorithm, the slot loop, ``drain()`` and reaping, written
  once as generators of effects; ``_staged``: a staged attempt's steps and lease
  renewal, in the same style; ``_units``: the multi-statement SQL units they run;
* ``_performer``: what both drivers' performers share (dispatch, bookkeeping).

The drivers, which perform the effects:

* ``_threads``: :class:`Worker` (slot threads, signals), with ``_thread_performer``
  (plain calls, ``Condition`` waker, process-wide SQLite writer lock) and ``_leases``
  (the lease keeper thread);
* ``_asyncio``: :class:`AsyncWorker` (slot tasks, one renewal task per staged
  attempt, loop signal handlers), with ``_asyncio_performer`` (``await run_sync``,
  future-based waker, a writer lock per event loop).
"""
