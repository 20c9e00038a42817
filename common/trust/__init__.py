"""Trust: signed model packages, the keys that sign and open them, and where a site installs them."""

from common.trust.keys import (
    generate_key_pair,
    key_id,
    load_device_key,
    load_device_public_key,
    load_signing_key,
    load_trusted_keys,
)
from common.trust.package import MANIFEST, Member, Package, build_package, check_identity, open_package, seal
from common.trust.policy import (
    PACKAGE_SUFFIX,
    TrustPolicy,
    TrustWatch,
    model_search_path,
    site_trust,
)
from common.trust.store import Fallback, Installed, ModelStore, Refused, load_installed, version_key

__all__ = [
    "MANIFEST",
    "PACKAGE_SUFFIX",
    "Fallback",
    "Installed",
    "Member",
    "ModelStore",
    "Package",
    "Refused",
    "TrustPolicy",
    "TrustWatch",
    "build_package",
    "check_identity",
    "generate_key_pair",
    "key_id",
    "load_device_key",
    "load_device_public_key",
    "load_installed",
    "load_signing_key",
    "load_trusted_keys",
    "model_search_path",
    "open_package",
    "seal",
    "site_trust",
    "version_key",
]
