"""``python -m atomsim ...`` is the ``atomsim`` command."""
import sys

from atomsim.cli import main

if __name__ == "__main__":
    sys.exit(main())
