import sys

from diffspace.cli import main

sys.exit(main())
