"""``python -m prewarm.cli``: the ``prewarm`` command."""

from prewarm.cli.commands import main

raise SystemExit(main())
