"""`python -m chimney_client.soak`: the same as `chimney-soak`."""

import sys

from .cli import main

sys.exit(main())
