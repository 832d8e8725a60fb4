"""``python -m queuert_sa.cli``: the same program as the ``queuert-sa`` script."""

from . import main

if __name__ == "__main__":
    main()
