"""The API fixtures live in tests/api_fixtures.py (tests/security/ uses them too); these names are imported from here."""

from tests.api_fixtures import MAX_BODY, ApiServer  # noqa: F401
