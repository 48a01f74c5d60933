"""python -m imggenhub_engine --job JOB.json --out DIR"""

import sys

from .worker import main

sys.exit(main())
