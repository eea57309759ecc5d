import sys

from textdiff.cli import main

sys.exit(main())
