"""``python -m queuert_sa``: the same program as the ``queuert-sa`` script."""

from .cli import main

if __name__ == "__main__":
    main()
