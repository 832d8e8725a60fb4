"""The names of ``queuert-sa bench``'s phases, apart from the bench module.

``bench --mode`` needs them when the command is defined, that is each time the
command line starts; keeping them here lets the command import the 600-line
``queuert_sa.bench`` only when it runs. ``queuert_sa.bench`` takes its
``PHASES`` from here, so the two cannot disagree.
"""

#: Every phase, in the order they run; a batched phase right after its unbatched twin.
PHASES = (
    "start-single",
    "start-batched",
    "atomic",
    "atomic-batch",
    "batch-handler",
    "atomic-session",
    "staged",
    "async-atomic",
    "async-atomic-batch",
    "async-staged",
)

#: The phases whose worker takes up to ``--batch`` jobs per transaction.
BATCHED_PHASES = ("atomic-batch", "batch-handler", "async-atomic-batch")
