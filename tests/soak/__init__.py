"""The five-minute soak (`make soak`; marked slow, skipped by `make test`)."""
