import sys

from segany.cli.main import main

sys.exit(main())
