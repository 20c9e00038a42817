import sys

from common.service import run_service
from services.broker.service import BrokerService

sys.exit(run_service(BrokerService))
