"""``python -m bufdemo`` is ``bufdemo``."""

import sys

from bufdemo.cli import main

sys.exit(main())
