"""``python -m demo`` is ``bufdemo``."""

import sys

from demo.cli import main

sys.exit(main())
