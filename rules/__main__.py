"""``python -m rules check PATH... [--stations S]``."""

from rules.cli import main

raise SystemExit(main())
