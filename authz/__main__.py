import sys

from authz.cli import main

sys.exit(main())
