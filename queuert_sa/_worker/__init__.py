"""The workers: one attempt engine, two drivers.

* ``_config``: settings, the handler registry and the state both drivers share;
* ``_policy``: every decision a worker takes, as pure functions of ``now``;
* ``_effects``: the IO requests the flows make of a driver;
* ``_flow``: the attempt algorithm (and the slot loop, drain, reaping, staged
  steps) written once, as generators of effects;
* ``_threads``: :class:`Worker`, which executes the flows on threads;
* ``_asyncio``: :class:`AsyncWorker`, which executes them on an event loop;
* ``_leases``: the thread driver's lease keeper for staged attempts.
"""
