#!/usr/bin/env python3
"""An admission webhook that answers creates with the refusals a test scripts, so that a test can
make the real API server refuse a request with a given status code (503 with no Retry-After, 429,
403) exactly when it wants to: the way it refuses creates of a kind it has only just learned.

    refusing_webhook.py CERT KEY DIR

Listens on 127.0.0.1 (a free port, written to DIR/port). Each request takes the first line of
DIR/plan (a status code) and answers with that refusal, or allows the request when the plan is
empty; each request appends "<code or 200> <kind> <name>" to DIR/log.
"""
import json
import os
import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

cert, key, state = sys.argv[1:4]
REASONS = {429: "TooManyRequests", 503: "ServiceUnavailable", 403: "Forbidden", 422: "Invalid"}


def next_code():
    path = os.path.join(state, "plan")
    try:
        with open(path) as f:
            lines = [l.strip() for l in f if l.strip()]
    except FileNotFoundError:
        return None
    if not lines:
        return None
    with open(path + ".tmp", "w") as f:
        f.write("".join(l + "\n" for l in lines[1:]))
    os.replace(path + ".tmp", path)
    return int(lines[0])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        request = review["request"]
        code = next_code()
        response = {"uid": request["uid"], "allowed": code is None}
        if code is not None:
            response["status"] = {"code": code, "reason": REASONS.get(code, "Unknown"),
                                  "message": f"refused by the test's webhook with {code}"}
        with open(os.path.join(state, "log"), "a") as f:
            f.write(f"{code or 200} {request['kind']['kind']} {request.get('name', '')}\n")
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": response}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(os.path.join(state, "port.tmp"), "w") as f:
    f.write(str(server.server_address[1]))
os.replace(os.path.join(state, "port.tmp"), os.path.join(state, "port"))
server.serve_forever()
