"""Checkpoints: the kept files (`store`), their announcement to API processes (`announce`),
their download by processes without the worker's volume (`transfer`), and rollbacks
(`rollback`, sent by the API in `rollback_sender`, taken by the worker in `rollback_inbox`)."""
