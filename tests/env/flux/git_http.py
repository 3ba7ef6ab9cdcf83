#!/usr/bin/env python3
"""Serve the bare git repositories under ROOT read-only over smart HTTP on 127.0.0.1.

Each request runs `git http-backend` as a CGI program, which is all Flux's source-controller
needs to clone. Tests push to the repositories through the file system, so no push over HTTP.

Usage: git_http.py ROOT PORT
"""

import http.server
import os
import shutil
import subprocess
import sys
import urllib.parse


class GitHandler(http.server.BaseHTTPRequestHandler):
    root = ""
    protocol_version = "HTTP/1.0"  # one request per connection; CGI output has no length

    def do_GET(self):
        self.run_backend()

    def do_POST(self):
        self.run_backend()

    def run_backend(self):
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": urllib.parse.unquote(url.path),
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(length),
            "REMOTE_ADDR": self.client_address[0],
            "HTTP_GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        proc = subprocess.run(
            [shutil.which("git") or "git", "http-backend"],
            input=body,
            env=env,
            capture_output=True,
            check=False,
        )
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name, value.strip()))
        if proc.returncode != 0 and status == 200:
            status = 500
            sys.stderr.write(proc.stderr.decode("utf-8", "replace"))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main():
    root, port = sys.argv[1], int(sys.argv[2])
    GitHandler.root = os.path.abspath(root)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), GitHandler)
    server.serve_forever()


if __name__ == "__main__":
    main()
