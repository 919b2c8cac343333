"""Test support shipped with the kernel: conformance suites and a pytest plugin."""
