"""The version of pykata (the distribution) and of the Kata agent API it speaks."""

VERSION = "0.1.0"

# Reported by Health.Version as the API version.
API_VERSION = "0.0.1"
