"""EdgeSight's services, one folder each: ``python -m services.<name> --config site.yaml``."""
