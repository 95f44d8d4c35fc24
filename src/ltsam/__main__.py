"""``python -m ltsam`` (and ``torchrun -m ltsam``): as the installed ``ltsam`` command, the working folder is
dropped from ``sys.path`` before anything else is imported, so that a ``tqdm.py`` there is never run.
``python -m`` has imported the package's ``__init__`` first, which imports nothing outside the standard library."""

import os
import sys

from ltsam.launcher import without_working_folder

sys.path[:] = without_working_folder(sys.path, os.getcwd(), bool(getattr(sys.flags, "safe_path", False)))

from ltsam.cli import main  # noqa: E402 - after the path is made safe

sys.exit(main())
