"""The demo storefront: a browser front end that is a gRPC client of the gateway."""
