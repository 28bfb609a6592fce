"""schemathesis hooks for Kiln's API check (scripts/test-openapi).

The API document describes request fields as plain strings: any recipe
name, platform, module path or version. Random strings of that kind are
all refused (400/404), so no build would ever be made and the stateful
links from a build would never be followed. This hook narrows the request
side of the loaded document to the recipes of the test farm's own
configuration (`CONFIG_PATH`), limited to those named in
`KILN_SCHEMATHESIS_RECIPES` (quick, offline ones): their names, platforms,
versions and plugins become `enum`s. Negative tests still send values
outside them. Response schemas are left as the API serves them.

With `KILN_SCHEMATHESIS_NO_FOLLOW` set (a farm without a worker, where no
build ever ends) the log's `follow` parameter is left out.
"""

import os

import schemathesis
import yaml


def _farm_recipes():
    with open(os.environ["CONFIG_PATH"], encoding="utf-8") as f:
        config = yaml.safe_load(f)
    wanted = os.environ.get("KILN_SCHEMATHESIS_RECIPES", "hello").split(",")
    recipes = {name: r for name, r in config["recipes"].items() if name in wanted}
    if not recipes:
        raise SystemExit(f"none of the recipes {wanted} is in {os.environ['CONFIG_PATH']}")
    return recipes


def _values(recipes):
    oses, arches, arms, versions, modules, plugin_versions = set(), set(), set(), {"latest"}, set(), {"latest"}
    replacements = False
    for r in recipes.values():
        replacements |= bool((r.get("plugins") or {}).get("replacements"))
        for p in r["platforms"]:
            parts = p.split("/")
            oses.add(parts[0])
            arches.add(parts[1])
            if len(parts) == 3:
                arms.add(parts[2])
        versions.update(r["versions"].get("versions", []))
        for module, vs in (r.get("plugins") or {}).get("versions", {}).items():
            modules.add(module)
            plugin_versions.update(vs)
    return {
        "recipe": sorted(recipes),
        "os": sorted(oses),
        "arch": sorted(arches),
        "arm": sorted(arms),
        "version": sorted(versions),
        "module": sorted(modules),
        "plugin_version": sorted(plugin_versions),
        "replacements": replacements,
    }


def _enum(schema, values):
    """Constrain a string schema (or a nullable one) to `values`."""
    if values:
        schema["enum"] = list(values) + ([None] if "null" in (schema.get("type") or []) else [])


@schemathesis.hook
def before_load_schema(context, raw_schema):
    v = _values(_farm_recipes())
    schemas = raw_schema["components"]["schemas"]
    request = schemas["BuildRequest"]["properties"]
    for field in ("recipe", "os", "arch", "version"):
        _enum(request[field], v[field])
    request["arm"] = {"type": ["string", "null"], "enum": v["arm"] + [None]}
    request["plugins"]["maxItems"] = 3
    if not v["replacements"]:
        request["replacements"]["maxItems"] = 0
    plugin = schemas["PluginRequest"]["properties"]
    _enum(plugin["module"], v["module"])
    _enum(plugin["version"], v["plugin_version"])

    if os.environ.get("KILN_SCHEMATHESIS_NO_FOLLOW"):
        # No build ends on this farm: a followed log would never end.
        log = raw_schema["paths"]["/api/builds/{key}/log"]["get"]
        log["parameters"] = [p for p in log["parameters"] if p["name"] != "follow"]

    compat = {"recipe": v["recipe"], "os": v["os"], "arch": v["arch"], "arm": v["arm"], "version": v["version"]}
    plugins = [f"{m}@{pv}" for m in v["module"] for pv in v["plugin_version"]] + v["module"]
    compat_operations = [op for path in ("/api/compat", "/api/resolve") for op in raw_schema["paths"][path].values()]
    for operation in compat_operations:
        for param in operation["parameters"]:
            if param["name"] in ("recipe", "os", "arch"):
                # Without `recipe` the farm looks for `caddy`, which the test
                # farm lacks; without `os` and `arch` (or `platform`) nothing builds.
                param["required"] = True
            if param["name"] in compat:
                _enum(param["schema"], compat[param["name"]])
            elif param["name"] == "p":
                param["schema"]["items"]["enum"] = plugins
                param["schema"]["maxItems"] = 3
