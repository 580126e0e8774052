"""`edithook edit` and `edithook tasks`: a person at a terminal talking to a running edithook.

It is a client of the REST API over HTTP (`EDITHOOK_URL`, `EDITHOOK_KEY`) and nothing more:
it imports none of the service's parts (no SQLAlchemy, procrastinate, pydantic or psycopg),
so that it starts at once (`tests/unit/test_cli_client.py` keeps its imports light).

- `api.py`: the HTTP calls, the task stream, problem documents as `ApiError`;
- `display.py`: the live progress line on a terminal (rich), plain lines elsewhere, tables;
- `commands.py`: the arguments, the commands and their exit codes.
"""
