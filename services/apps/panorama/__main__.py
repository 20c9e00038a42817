import sys

from services.apps.panorama.cli import main

sys.exit(main())
