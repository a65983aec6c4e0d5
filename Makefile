# A developer's pre-commit check: lint, format and the fast tests, in seconds.
check:
	ruff check . && ruff format --check . && python -m pytest -q -m "not slow" -x

.PHONY: check
