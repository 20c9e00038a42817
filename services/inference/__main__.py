import sys

from common.service import run_service
from services.inference.service import InferenceService

sys.exit(run_service(InferenceService))
