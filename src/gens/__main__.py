import sys

from gens.cli import main

sys.exit(main())
