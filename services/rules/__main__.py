import sys

from common.service import run_service
from services.rules.service import RulesService

sys.exit(run_service(RulesService))
