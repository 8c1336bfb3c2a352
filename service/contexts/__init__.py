"""Contexts: registering and deleting them (`service`), what defines one (`definition`), the
live key-to-row map every serving process keeps (`live_keys`) and the reading of deletions
made by any process (`retirements`)."""
