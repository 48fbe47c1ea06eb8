import sys

from motensor.cli import main

sys.exit(main())
