"""Just enough of a Kubernetes API server for `helm install/upgrade --dry-run=server`, so that
the chart's `lookup` of its generated VNC Secret can be tested without a cluster. Usage:

    fake_apiserver.py PORT [SECRET_NAME=BASE64 ...]

Discovery answers for v1 and apps/v1, an empty release history, the Secrets given on the
command line (in every namespace), and 404 for anything else.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SECRETS = dict(arg.split("=", 1) for arg in sys.argv[2:])


def resources(group_version, names):
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": [
            {"name": plural, "singularName": plural[:-1], "namespaced": True, "kind": kind,
             "verbs": ["get", "list", "create", "update", "patch", "delete"]}
            for plural, kind in names
        ],
    }


DISCOVERY = {
    "/version": {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
         "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]},
    "/api/v1": resources("v1", [("secrets", "Secret"), ("configmaps", "ConfigMap"),
                                ("services", "Service"), ("pods", "Pod")]),
    "/apis/apps/v1": resources("apps/v1", [("statefulsets", "StatefulSet")]),
}


class Handler(BaseHTTPRequestHandler):
    def answer(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in DISCOVERY:
            return self.answer(200, DISCOVERY[path])
        parts = path.strip("/").split("/")
        # /api/v1/namespaces/NS/secrets[/NAME]
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) >= 5 and parts[4] == "secrets":
            if len(parts) == 5:
                return self.answer(200, {"kind": "SecretList", "apiVersion": "v1",
                                         "metadata": {}, "items": []})
            if parts[5] in SECRETS:
                return self.answer(200, {
                    "kind": "Secret", "apiVersion": "v1", "type": "Opaque",
                    # Owned by the release, as after `helm install`: helm may update it.
                    "metadata": {"name": parts[5], "namespace": parts[3],
                                 "labels": {"app.kubernetes.io/managed-by": "Helm"},
                                 "annotations": {"meta.helm.sh/release-name": "vm",
                                                 "meta.helm.sh/release-namespace": parts[3]}},
                    "data": {"vnc-password": SECRETS[parts[5]]}})
        self.answer(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": "NotFound", "code": 404})

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
