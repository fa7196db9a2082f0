import sys

from modeldoctor.cli.app import main

sys.exit(main())
