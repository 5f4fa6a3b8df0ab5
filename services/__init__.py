"""Serving: Ray Serve deployments, the HTTP ingress, a client, the LangChain tool and the CLI."""
