import sys

from ltsam.cli import main

sys.exit(main())
