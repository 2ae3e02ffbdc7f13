import sys

from gnl.cli import main

sys.exit(main())
