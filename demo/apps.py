"""The demo's two applications: `backend` answers who it is; `web` asks backend through its
Envoy's outbound listener and returns both answers. Standard library only, one thread each."""

from __future__ import annotations

import argparse
import json
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def backend_handler(instance: str) -> type[BaseHTTPRequestHandler]:
    class Backend(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/sleep/"):  # a slow request, for the drain tests
                time.sleep(float(self.path.removeprefix("/sleep/")))
            body = {"service": "backend", "instance": instance, "path": self.path}
            caller = self.headers.get("x-forwarded-client-cert")  # set by Envoy under mTLS
            if caller:
                body["caller"] = caller
            _reply(self, body)

        def log_message(self, *args: object) -> None:
            pass

    return Backend


def web_handler(instance: str, backend_url: str) -> type[BaseHTTPRequestHandler]:
    class Web(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            with urllib.request.urlopen(backend_url + self.path, timeout=5) as resp:
                answer = json.loads(resp.read())
            _reply(self, {"service": "web", "instance": instance, "backend": answer})

        def log_message(self, *args: object) -> None:
            pass

    return Web


def _reply(handler: BaseHTTPRequestHandler, body: dict[str, object]) -> None:
    data = json.dumps(body).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["backend", "web"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--backend-url", default="")
    args = parser.parse_args()
    if args.role == "backend":
        handler = backend_handler(args.instance)
    else:
        handler = web_handler(args.instance, args.backend_url)
    ThreadingHTTPServer(("127.0.0.1", args.port), handler).serve_forever()


if __name__ == "__main__":
    main()
