"""paysera-token-broker: shares Paysera Checkout OAuth2 tokens and the upstream budget."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("paysera-token-broker")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
