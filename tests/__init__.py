import pytest

# The support wing asserts too (what a helper expects of the store, a service that
# exited): rewrite its asserts as pytest does a test module's, for the same detail.
pytest.register_assert_rewrite("tests.support")
