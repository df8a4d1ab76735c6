"""The gRPC API: servicers, wire <-> numpy, the error table, the guard, auth and health."""
