"""The supervision console in the browser (issue 16): an aiohttp application on the gateway's
own event loop, on its own TLS listener (`[console]`), for operators (`[operators]`, never mail
accounts).

- `web.py`: the application (login, sessions, CSRF, security headers, pages);
- `server.py`: its listener (`ConsoleServer`: TLS context from a `tlspolicy` preset, AppRunner);
- `flows.py`: pure aggregation of audit records into flows per partner;
- `charts.py`: pure server-rendered SVG;
- `sessions.py`: in-memory sessions and their CSRF tokens.

Imported only when a console is configured (`gateway.app`): the plain relay never loads aiohttp.
"""
