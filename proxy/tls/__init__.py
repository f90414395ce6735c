"""TLS for both legs: material, grpc credentials, reload, expiry checks, peer identity."""
