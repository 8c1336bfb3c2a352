"""The `psp` command line: the server, worker and admin commands (`commands`) and the client
commands over psp_client (`client`)."""
