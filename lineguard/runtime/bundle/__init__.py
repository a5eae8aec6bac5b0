"""The bundle: its on-disk format (manifest, files, hashes) and the engines that run its graphs."""

from lineguard.runtime.bundle.format import Bundle, BundleWriter, existing, sha256_file

__all__ = ["Bundle", "BundleWriter", "existing", "sha256_file"]
