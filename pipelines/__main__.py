"""``python -m pipelines <app> --compile OUT.yaml | --host URL | --local``; see ``pipelines.cli``."""

import sys

from pipelines.cli import main

sys.exit(main())
