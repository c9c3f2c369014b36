import sys

from compressor.cli.main import main

sys.exit(main())
