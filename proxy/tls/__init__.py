"""TLS for both legs: material, grpc credentials, reload, expiry checks, peer identity.

`material` reads and validates files into frozen values; `credentials` turns them into grpc
server and channel credentials; `reload` rebuilds and swaps them at runtime; `expiry` applies
Temporal's expiration windows; `peer` reads the verified client certificate per connection.
Import from the module that does the job; nothing is re-exported here.
"""
