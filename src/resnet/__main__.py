"""`python -m resnet`: the same command line as `resnet`."""

import sys

from .cli import main

sys.exit(main())
