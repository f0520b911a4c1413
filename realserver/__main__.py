import sys

from realserver.cli import main

sys.exit(main())
