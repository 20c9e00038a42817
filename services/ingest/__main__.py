import sys

from common.service import run_service
from services.ingest.service import IngestService

sys.exit(run_service(IngestService))
