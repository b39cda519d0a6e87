"""Operating a deployed stack: load tests and tuning, the smoke test, and promotion between environments
from deployment records."""
