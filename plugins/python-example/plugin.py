#!/usr/bin/python3
"""A tsidp claims plugin in Python: roles from a table in its configuration.

Configuration (under the plugin's "config:" in tsidp's configuration):

    roles:                     # login or tag -> roles
      alice@example.com: [admin, dev]
      tag:ci: [deployer]
    deny_tags: [tag:quarantine]  # devices with these tags get no token
"""

import json

import tsidp_plugin
from tsidp_plugin import claims_pb2


class RolesPlugin:
    def __init__(self):
        self.roles = {}
        self.deny_tags = set()

    def describe(self):
        return claims_pb2.DescribeResponse(
            name="python-example", version="1.0.0", claims=["roles"], cacheable=True
        )

    def configure(self, config):
        unknown = set(config) - {"roles", "deny_tags"}
        if unknown:
            raise ValueError("unknown config keys: %s" % ", ".join(sorted(unknown)))
        self.roles = config.get("roles", {})
        self.deny_tags = set(config.get("deny_tags", []))

    def enrich(self, request, context):
        who = request.identity
        if self.deny_tags.intersection(who.tags):
            return claims_pb2.EnrichResponse(deny=True, reason="device is quarantined")
        keys = list(who.tags) if who.tagged else [who.login_name]
        roles = sorted({r for k in keys for r in self.roles.get(k, [])})
        resp = claims_pb2.EnrichResponse()
        if roles:
            resp.claims.add(name="roles", value_json=json.dumps(roles, separators=(",", ":")).encode())
        resp.cache_ttl.FromSeconds(30)
        tsidp_plugin.log("debug", "enriched", login=who.login_name, roles=roles)
        return resp


def main():
    tsidp_plugin.serve(RolesPlugin())


if __name__ == "__main__":
    main()
