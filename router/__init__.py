"""Route bindings, request/response schemas, the in-process pipeline and the joint training loss."""
