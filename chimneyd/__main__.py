"""`python -m chimneyd` and the `chimneyd` console script."""

from __future__ import annotations

import sys

from chimneyd.daemon import main

if __name__ == "__main__":
    sys.exit(main())
