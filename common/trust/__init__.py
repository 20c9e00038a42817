"""Trust: signed model packages, the keys that sign and open them, and where a site installs them."""

from common.trust.keys import (
    generate_key_pair,
    key_id,
    load_device_key,
    load_device_public_key,
    load_signing_key,
    load_trusted_keys,
)
from common.trust.package import MANIFEST, Member, Package, build_package, open_package, seal
from common.trust.policy import PACKAGE_SUFFIX, TrustPolicy, model_file, model_search_path, site_trust
from common.trust.store import Installed, ModelStore

__all__ = [
    "MANIFEST",
    "PACKAGE_SUFFIX",
    "Installed",
    "Member",
    "ModelStore",
    "Package",
    "TrustPolicy",
    "build_package",
    "generate_key_pair",
    "key_id",
    "load_device_key",
    "load_device_public_key",
    "load_signing_key",
    "load_trusted_keys",
    "model_file",
    "model_search_path",
    "open_package",
    "seal",
    "site_trust",
]
