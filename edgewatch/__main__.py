"""``python -m edgewatch``: the ``edgewatch`` command (report, compare)."""

from edgewatch.cli.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
