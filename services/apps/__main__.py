import sys

from common.service import run_service
from services.apps.service import AppsService

sys.exit(run_service(AppsService))
