import sys

from common.service import run_service
from services.fleet.service import FleetService

sys.exit(run_service(FleetService))
