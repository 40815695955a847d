"""Other implementations our code is tested and measured against, built by the project itself."""
