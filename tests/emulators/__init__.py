"""Device emulators for integration tests: real protocol peers on loopback."""
