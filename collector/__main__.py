import sys

from tailsampler.collector.cli import main

sys.exit(main())
