import sys

from common.service import run_service
from services.console.service import ConsoleService

sys.exit(run_service(ConsoleService))
