import sys

from common.service import run_service
from services.uplink.service import UplinkService

sys.exit(run_service(UplinkService))
