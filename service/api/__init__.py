"""The HTTP layer: routes validate and map errors; the work happens in the service modules."""
