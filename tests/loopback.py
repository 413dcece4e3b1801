"""An HTTP server on 127.0.0.1 for the tests of download code: started in a thread, stopped on exit."""
from __future__ import annotations

import contextlib
import http.server
import threading


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]):
    """Serve with `handler` on a free loopback port; yields the base URL `http://127.0.0.1:PORT`."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
