"""The benchmark harness behind `make bench`: load generator, ceilings and the report."""
