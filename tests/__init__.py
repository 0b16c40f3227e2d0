"""The test suite: pytest, CPU only (a package, so that tests share tests/helpers.py)."""
